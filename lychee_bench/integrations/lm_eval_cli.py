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

EXIT_BAD_INPUT = 2  # as `lychee-bench` for bad input


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI on `argv` (default: this process's arguments) with lychee-bench's model registered."""
    from lm_eval.__main__ import cli_evaluate

    from lychee_bench.integrations.lm_eval_model import LycheeBenchArgumentError  # registers --model lychee-bench

    args = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except LycheeBenchArgumentError as error:  # bad --model_args: the reasons, not a traceback
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


if __name__ == "__main__":
    main()
