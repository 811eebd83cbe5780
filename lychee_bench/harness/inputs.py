"""Model inputs from (prompt, answer prefix): the chat template rendered once, no double BOS, and the
"decode exercise" split (SPEC §5).

Inputs are built once, the same way for counting and for running (so task length fitting is exact): the chat
template is rendered to text and tokenised WITHOUT adding special tokens again (the template already holds
the BOS where the model wants one; adding it again is RULER's "double BOS" trap). The answer prefix follows
the assistant turn. The decode exercise feeds the last characters of the question, and everything after
them, one token at a time through the decode path instead of the dense prefill.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass
class FormattedInput:
    """Token ids of one model input and how many of its last tokens are decoded one by one."""

    input_ids: list[int]
    exercise_tokens: int  # trailing tokens fed through the decode path (0: all prefilled)


class InputFormatter:
    """Builds model inputs from (prompt, answer prefix) with or without the tokenizer's chat template."""

    def __init__(self, tokenizer: Any, use_chat_template: bool | None = None, exercise_chars: int = 0):
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if use_chat_template and not has_template:
            raise ValueError("--chat-template was asked for but this tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        self.exercise_chars = exercise_chars

    def render(self, prompt: str, answer_prefix: str) -> tuple[str, bool]:
        """The input text, and whether the tokenizer must add its special tokens itself."""
        if self.use_chat_template:
            messages = [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + answer_prefix, False
        return prompt + answer_prefix, True

    def format(self, prompt: str, answer_prefix: str) -> FormattedInput:
        text, add_special = self.render(prompt, answer_prefix)
        if self.exercise_chars <= 0:
            ids = self.tokenizer(text, add_special_tokens=add_special).input_ids
            return FormattedInput(ids, 0)
        encoded = self.tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
        ids, offsets = encoded.input_ids, encoded.offset_mapping
        tail = prompt[-self.exercise_chars :]
        question_tail_start = text.rfind(tail)
        if question_tail_start < 0:  # the template changed the prompt text; fall back to the answer prefix
            question_tail_start = len(text) - len(answer_prefix)
        first = next(
            (i for i, (start, end) in enumerate(offsets) if end > question_tail_start and end > start),
            len(ids),
        )
        # Keep at least one token in the prefill so the cache is never empty.
        exercise = min(len(ids) - first, len(ids) - 1)
        return FormattedInput(ids, exercise)

    def count_tokens(self, prompt: str, answer_prefix: str) -> int:
        text, add_special = self.render(prompt, answer_prefix)
        return len(self.tokenizer(text, add_special_tokens=add_special).input_ids)

    def fingerprint(self) -> str:
        """Identity of the tokenizer and the input format (for sample caches and results)."""
        digest = hashlib.sha256()
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        digest.update((backend.to_str() if backend is not None else repr(self.tokenizer.get_vocab())).encode())
        digest.update(str(getattr(self.tokenizer, "chat_template", "")).encode())
        digest.update(f"chat={self.use_chat_template}".encode())
        return digest.hexdigest()[:16]
