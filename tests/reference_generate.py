"""The reference the engine is checked against: greedy generation through transformers' own forward, with the
method plugged in through the attention hook (harness/attention.py), a DynamicCache and a growing mask, one
sequence of host decisions per step. Slow and simple on purpose (it was the project's engine before the static,
graph-captured one); the engine must produce its tokens exactly.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from lychee_bench.harness.attention import cache_keyword, method_attention
from lychee_bench.harness.inputs import FormattedInput
from lychee_bench.methods.base import Method
from lychee_bench.methods.state import DecodeState


def _forward(model, input_ids, mask, positions, cache, state):
    keyword = cache_keyword(model)
    return model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        lychee_state=state,
        **{keyword: cache},
    ).logits[:, -1, :]


@torch.inference_mode()
def reference_generate(
    model: torch.nn.Module,
    inputs: list[FormattedInput],
    method: Method,
    limits: list[int],
    stop_ids: set[int],
    pad_id: int,
) -> list[list[int]]:
    """Greedy tokens per row (stop tokens excluded), left padding, forced decode-exercise tokens, each row
    stopping at its own end of sequence or limit, cache correction when the method asks for it."""
    batch = len(inputs)
    prefill = [x.input_ids[: len(x.input_ids) - x.exercise_tokens] for x in inputs]
    forced = [list(x.input_ids[len(x.input_ids) - x.exercise_tokens :]) for x in inputs]
    width = max(len(ids) for ids in prefill)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(prefill):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    lengths = [len(ids) for ids in prefill]
    with method_attention(model):
        state = DecodeState(method=method)
        state.begin_step("prefill")
        logits = _forward(model, input_ids, mask, positions, cache, state)
        generated: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        next_positions = positions[:, -1:] + 1
        period = method.correction_period
        recent: list[torch.Tensor] = []
        steps = 0
        while True:
            greedy = logits.argmax(dim=-1).tolist()
            tokens = []
            for row in range(batch):
                if forced[row]:
                    tokens.append(forced[row].pop(0))
                    continue
                if done[row]:
                    tokens.append(pad_id)
                    continue
                token = int(greedy[row])
                if token in stop_ids:
                    done[row] = True
                else:
                    generated[row].append(token)
                    done[row] = len(generated[row]) >= limits[row]
                tokens.append(token)
            if all(done):
                return generated
            step_ids = torch.tensor(tokens)[:, None]
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype)], dim=1)
            steps += 1
            state.begin_step("decode", [n + steps for n in lengths])
            logits = _forward(model, step_ids, mask, next_positions, cache, state)
            next_positions = next_positions + 1
            if period:
                recent.append(step_ids)
                if len(recent) == period:  # cache correction: the last `period` tokens again, densely
                    cache.crop(-period)
                    again = torch.cat(recent, dim=1)
                    at = next_positions - period + torch.arange(period)[None, :]
                    state.begin_step("prefill")
                    _forward(model, again, mask, at, cache, state)
                    recent.clear()
