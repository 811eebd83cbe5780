"""One process of the tensor-parallel test launch (tests/test_tensor_parallel.py starts it under torchrun, gloo).

Every process joins the group, then: decodes each tiny model folder with every method on its shard through the
engine (rank 0 writes the tokens), runs `lychee-bench run --tensor-parallel` and `lychee-bench bench --smoke
--tensor-parallel` through the command line. The test compares the tokens and records with one process's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from lychee_bench.harness import models, tensor_parallel
from lychee_bench.harness.engine import Engine, GenerationSettings
from lychee_bench.harness.inputs import FormattedInput
from lychee_bench.harness.runner import build_methods
from lychee_bench.methods.artifacts import KascadeAnchors
from lychee_bench.methods.base import Method
from lychee_bench.methods.kascade import Kascade, KascadeConfig

# Small budgets so that every sparse method really selects in a 40-token context (4 layers, 2 KV heads).
ENTRIES = [
    "full",
    "lychee[roles=uniform:3;granularity=token;sink=4;recent=8;budget=16]",
    "lychee[roles=uniform:3;granularity=block;block_size=8;budget=16]",
    "duo[roles=uniform:3;sink=4;recent=8]",
    "streaming[sink=4;budget=12]",
    "quest[budget=16;page_size=4;dense_layers=1]",
    "tidal[budget=16;selection_layer=1;reselect_layer=2]",
]
# Kascade with anchors 0 and 2: a head map whose reuse heads read the other KV head's set (held by the other
# process under TP=2: the sets are gathered), and the identity map (nothing gathered).
KASCADE_MAPS = {"kascade-crossed": [[0, 1], [1, 0], [0, 1], [1, 0]], "kascade-identity": [[0, 1]] * 4}
INPUTS = [(40, 5), (33, 3)]  # (prompt tokens, of which decoded one by one): two rows, left padding


def methods(only: list[str] | None = None) -> list[Method]:
    """Every method above, or those labelled in `only`."""
    built = build_methods([e for e in ENTRIES if only is None or e in only], {})
    for label, head_map in KASCADE_MAPS.items():
        if only is not None and label not in only:
            continue
        kascade = Kascade(KascadeConfig(budget=8))
        kascade.anchors = KascadeAnchors([0, 2], head_map, "test", label)  # the checksum keeps the two apart
        kascade.label = label
        built.append(kascade)
    return built


def inputs(vocab: int) -> list[FormattedInput]:
    generator = torch.Generator().manual_seed(0)
    return [FormattedInput(torch.randint(1, vocab, (n,), generator=generator).tolist(), e) for n, e in INPUTS]


def decode(model: torch.nn.Module, only: list[str] | None = None) -> dict[str, list[list[int]]]:
    """Greedy tokens of every method (or those in `only`; 6 new tokens per row) on `model` (whole, or this
    process's shard)."""
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=-1, decode=lambda ids, skip_special_tokens=True: "")
    chosen = methods(only)
    for method in chosen:
        method.prepare(model)
    engine = Engine(model, tokenizer, graphs=False, compiled=False)
    outputs = engine.generate(inputs(model.config.vocab_size), GenerationSettings(6), chosen)
    return {label: [generation.token_ids for generation in rows] for label, rows in outputs.items()}


def main(out: Path, folders: dict[str, list[str] | None], run_args: list[str], bench_args: list[str]) -> None:
    from typer.testing import CliRunner

    from lychee_bench.cli import app

    parallel = tensor_parallel.init_from_env("cpu")
    tokens = {}
    for folder, only in folders.items():
        source = models.resolve_model(folder)
        config = models.load_config(source)
        model = tensor_parallel.load_model(source, config, "float32", 0, parallel)
        tokens[folder] = decode(model, only)
    found = {"tokens": tokens, "heads": model.model.layers[0].self_attn.k_proj.weight.shape[0]}
    for name, args in (("run", run_args), ("bench", bench_args)):
        result = CliRunner().invoke(app, args)
        found[name] = {"exit_code": result.exit_code, "output": result.output[-3000:]}
    (out / f"rank{parallel.rank}.json").write_text(json.dumps(found))
    parallel.close()


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    main(Path(arguments["out"]), arguments["folders"], arguments["run"], arguments["bench"])
