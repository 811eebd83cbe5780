"""lm-eval's own command line with `--model lychee-bench` registered.

lm-eval 0.4.x finds a model by name in its registry, which holds only its own models until something imports a
module that registers another: its CLI reads no plugin entry points (that arrived upstream after 0.4.13; this
package declares an `lm_eval.models` entry point for lm-eval versions that read it). So this command imports the
model (registering it) and hands every argument to lm-eval's CLI unchanged:

    python -m lychee_bench.integrations.lm_eval_cli --model lychee-bench --model_args pretrained=smollm2-135m ...
    lychee-bench lm-eval --model lychee-bench --model_args pretrained=smollm2-135m,method=lychee ...

In Python, `import lychee_bench.integrations.lm_eval_model` before `lm_eval.simple_evaluate(model="lychee-bench")`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI on `argv` (default: this process's arguments) with lychee-bench's model registered."""
    from lm_eval.__main__ import cli_evaluate

    import lychee_bench.integrations.lm_eval_model  # noqa: F401  (registers --model lychee-bench)

    args = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
