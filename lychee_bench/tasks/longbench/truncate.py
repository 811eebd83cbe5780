"""Middle truncation as LongBench's pred.py does it: keep the first and the last half of the token budget.

pred.py tokenises the whole formatted prompt and, when it is longer than the model's limit, decodes its first
`limit // 2` and its last `limit // 2` tokens separately (special tokens skipped) and joins the two texts: the
instructions at both ends survive and the middle of the context goes. Here the limit is the input budget
(--ctx minus the dataset's generation length) measured on the whole model input, so the budget left for the
prompt's own tokens is that minus what the chat template and BOS add. Decoding and re-encoding can merge or
split tokens at the seam, so the result is measured again and cut further until it fits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MAX_ROUNDS = 8


def truncate_middle(
    prompt: str, budget: int, count: Callable[[str], int], tokenizer: Any
) -> tuple[str, dict[str, Any]]:
    """`prompt` cut in the middle so that `count(prompt) <= budget`; and whether it was cut, its count before."""
    total = count(prompt)
    if total <= budget:
        return prompt, {"truncated": False, "prompt_tokens": total}
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    overhead = total - len(ids)  # chat template and BOS around the prompt
    keep = budget - overhead
    for _ in range(_MAX_ROUNDS):
        half = keep // 2
        if half <= 0:
            break
        text = tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(
            ids[-half:], skip_special_tokens=True
        )
        fitted = count(text)
        if fitted <= budget:
            return text, {"truncated": True, "prompt_tokens": total}
        keep -= fitted - budget
    raise ValueError(
        f"cannot fit the prompt into {budget} input tokens (the chat template and special tokens alone take "
        f"{overhead}); raise --ctx so that ctx minus the generation length leaves room for the text"
    )
