"""Prefill and decode: the loop every method and task runs through.

Inputs are built once, the same way for counting and for running (so task length fitting is exact): the chat
template is rendered to text and tokenised WITHOUT adding special tokens again (the template already holds
the BOS where the model wants one; adding it again is RULER's "double BOS" trap). The answer prefix follows
the assistant turn. The "decode exercise" (SPEC §5) feeds the last characters of the question, and everything
after them, one token at a time through the decode path instead of the dense prefill.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from lychee_bench.harness.attention import DecodeState, method_attention
from lychee_bench.methods.base import Method


@dataclass
class FormattedInput:
    """Token ids of one model input and how many of its last tokens are decoded one by one."""

    input_ids: list[int]
    exercise_tokens: int  # trailing tokens fed through the decode path (0: all prefilled)


@dataclass
class GenerationSettings:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Generation:
    text: str
    new_tokens: int
    exercise_tokens: int
    stop_reason: str  # "eos" or "length"
    decode_seconds: float = 0.0  # this method's whole decode loop for the batch (shared by its rows)
    decode_steps: int = 0  # forward calls of that loop


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _cache_keyword(model: torch.nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache`; accept both releases."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    for value in eos if isinstance(eos, list) else [eos]:
        if value is not None:
            ids.add(int(value))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class Engine:
    """Dense prefill, then token-by-token decode with a method plugged into attention.

    Prefill is dense in every method, so one prefill serves all the methods compared on a batch: each method
    decodes from its own copy of the prefilled cache. That halves the CPU cost of comparing two methods and
    guarantees they start from bit-identical caches. Methods with equal `decode_signature()` (the same method
    and effective options under different labels) are decoded once; `last_shared` says which reused which.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any):
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.stop_ids = _stop_token_ids(model, tokenizer)
        fallback_pad = min(self.stop_ids or {0})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else fallback_pad
        self.cache_keyword = _cache_keyword(model)
        self.last_prefill_seconds = 0.0  # the shared dense prefill of the last generate()
        self.last_counters: dict[str, float] = {}  # the last method's statistics (e.g. K/V tokens read)
        self.last_shared: dict[str, str] = {}  # label -> the label whose identical decode it reuses

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, state):
        return self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            lychee_state=state,
            **{self.cache_keyword: cache},
        )

    @torch.inference_mode()
    def generate(
        self,
        inputs: list[FormattedInput],
        settings: GenerationSettings,
        methods: list[Method],
        row_limits: list[int] | None = None,
    ) -> dict[str, list[Generation]]:
        """Generate for a batch of inputs (left-padded) with each method; results keyed by method label.

        `row_limits` gives each row its own most new tokens (rows of different tasks in one batch); without it
        every row has `settings.max_new_tokens`.
        """
        batch = len(inputs)
        if row_limits is not None and len(row_limits) != batch:
            raise ValueError(f"row_limits has {len(row_limits)} entries for {batch} inputs")
        limits = row_limits or [settings.max_new_tokens] * batch
        prefill = [item.input_ids[: len(item.input_ids) - item.exercise_tokens] for item in inputs]
        width = max(len(ids) for ids in prefill)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, ids in enumerate(prefill):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        cache = DynamicCache(config=self.model.config)
        began = time.perf_counter()
        with method_attention(self.model):
            state = DecodeState(method=methods[0])
            state.begin_step("prefill")
            logits = self._forward(input_ids, mask, positions, cache, state).logits[:, -1, :]
            _synchronize(self.device)
            self.last_prefill_seconds = time.perf_counter() - began
            lengths = [len(ids) for ids in prefill]
            results: dict[str, list[Generation]] = {}
            decoded: dict[str, str] = {}  # decode signature -> the label that decoded it
            self.last_shared = {}
            signatures = [method.decode_signature() for method in methods]
            distinct = set(signatures)
            for method, signature in zip(methods, signatures, strict=True):
                if signature in decoded:  # the same decode by construction (e.g. one roles table under two names)
                    self.last_shared[method.label] = decoded[signature]
                    results[method.label] = copy.deepcopy(results[decoded[signature]])
                    continue
                decoded[signature] = method.label
                # The last distinct method may consume the prefilled cache itself; the others decode from copies.
                own_cache = cache if len(decoded) == len(distinct) else copy.deepcopy(cache)
                results[method.label] = self._decode(
                    inputs, settings, method, own_cache, logits, mask, positions, lengths, limits
                )
        return results

    def _decode(self, inputs, settings, method, cache, logits, mask, positions, lengths, limits) -> list[Generation]:
        """Decode every row until it stops (end of sequence, or its limit of new tokens); `lengths` are the rows'
        real prefilled tokens (host values)."""
        began = time.perf_counter()
        batch = len(inputs)
        forced = [item.input_ids[len(item.input_ids) - item.exercise_tokens :] for item in inputs]
        generators = [_generator(settings.seed, row) for row in range(batch)] if settings.temperature > 0 else []
        state = DecodeState(method=method)
        generated: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        stop_reason = ["length"] * batch
        next_positions = positions[:, -1:] + 1
        period = int(getattr(method.config, "correction_period", 0) or 0)
        sparse_inputs: list[torch.Tensor] = []  # tokens decoded sparsely since the last correction
        steps = 0
        while True:
            next_tokens = []
            # Greedy: one argmax and one read-back for the whole batch.
            greedy = logits.argmax(dim=-1).tolist() if settings.temperature <= 0 else None
            for row in range(batch):
                if forced[row]:
                    next_tokens.append(forced[row].pop(0))
                    continue
                if done[row]:
                    next_tokens.append(self.pad_id)
                    continue
                if greedy is not None:
                    token = int(greedy[row])
                else:
                    token = _sample(logits[row], settings, generators[row])
                if token in self.stop_ids:
                    done[row], stop_reason[row] = True, "eos"
                else:
                    generated[row].append(token)
                    if len(generated[row]) >= limits[row]:
                        done[row] = True
                next_tokens.append(token)
            if all(done):
                break
            step_ids = torch.tensor(next_tokens, device=self.device)[:, None]
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=self.device)], dim=1)
            steps += 1  # every row feeds a token (a finished row a pad) with mask 1, so each grows by one
            state.begin_step("decode", [length + steps for length in lengths])
            logits = self._forward(step_ids, mask, next_positions, cache, state).logits[:, -1, :]
            next_positions = next_positions + 1
            if period:
                sparse_inputs.append(step_ids)
                if len(sparse_inputs) == period:
                    self._correct_cache(cache, sparse_inputs, mask, next_positions, state)
                    sparse_inputs.clear()
        self.last_counters = state.totals()
        seconds = time.perf_counter() - began  # the loop ends on a read-back of the last logits: device work done
        return [
            Generation(
                text=self.tokenizer.decode(generated[row], skip_special_tokens=True),
                new_tokens=len(generated[row]),
                exercise_tokens=inputs[row].exercise_tokens,
                stop_reason=stop_reason[row],
                decode_seconds=seconds,
                decode_steps=steps,
            )
            for row in range(batch)
        ]

    def _correct_cache(self, cache, sparse_inputs, mask, next_positions, state) -> None:
        """Cache correction (LycheeDecode): recompute, with dense attention, the K/V of the tokens decoded
        sparsely since the last correction and overwrite them. The next-token logits stay the sparse ones."""
        count = len(sparse_inputs)
        cache.crop(-count)  # negative: remove that many tokens (accepted by old and new transformers)
        tokens = torch.cat(sparse_inputs, dim=1)
        positions = next_positions - count + torch.arange(count, device=self.device)[None, :]
        state.begin_step("prefill")  # dense in every head
        self._forward(tokens, mask, positions, cache, state)
        state.count("corrections", 1)


def _generator(seed: int, row: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + row)
    return generator


def _sample(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> int:
    """One token drawn at `settings.temperature` (> 0), within the top-p mass when top_p < 1."""
    probs = torch.softmax(logits.float().cpu() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > settings.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())
