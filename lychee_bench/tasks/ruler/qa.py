"""Question answering (RULER qa.py): a real question's gold paragraph(s) hidden among distractor paragraphs.

Sample i asks question i of the dataset (file order, SQuAD's unanswerable ones left out), as RULER does; the
seed only changes the distractors. Distractors come first from the same article (SQuAD), then from anywhere.
"""

from __future__ import annotations

import random
from typing import Any

from lychee_bench.tasks.ruler.assets import qa_dataset
from lychee_bench.tasks.ruler.constants import DOCUMENT_PROMPT, FAMILIES
from lychee_bench.tasks.ruler.family import Instance, NvidiaSizing

TEMPLATE = FAMILIES["qa"]["template"]
ANSWER_PREFIX = FAMILIES["qa"]["answer_prefix"]


class QuestionAnsweringFamily:
    unit = "documents"

    def __init__(self, args: dict[str, Any], ctx: int, seed: int):
        self.dataset = args["dataset"]
        self.questions, self.docs = qa_dataset(self.dataset)
        self.seed = seed

    def _question(self, index: int) -> dict[str, Any]:
        return self.questions[index % len(self.questions)]

    def size_bounds(self, index: int) -> tuple[int, int]:
        return len(self._question(index)["context"]), len(self.docs)

    def _documents(self, question: dict[str, Any], size: int, rng: random.Random) -> list[int]:
        gold, nearby = question["context"], question.get("more_context", [])
        if size >= len(self.docs):
            chosen = list(range(len(self.docs)))
        elif size - len(gold) > len(nearby):
            taken = set(gold) | set(nearby)
            others = [i for i in range(len(self.docs)) if i not in taken]
            chosen = gold + nearby + rng.sample(others, size - len(gold) - len(nearby))
        else:
            chosen = gold + rng.sample(nearby, size - len(gold))
        random.Random(self.seed).shuffle(chosen)  # RULER: a fresh generator on the run seed
        return chosen

    def make(self, size: int, rng: random.Random, index: int) -> Instance:
        question = self._question(index)
        chosen = self._documents(question, size, rng)
        context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=self.docs[doc]) for i, doc in enumerate(chosen))
        prompt = TEMPLATE.format(context=context, query=question["query"])
        gold_positions = sorted(chosen.index(doc) + 1 for doc in question["context"])
        meta = {
            "haystack_size": size,
            "unit": self.unit,
            "dataset": self.dataset,
            "question_index": index % len(self.questions),
            "gold_documents": gold_positions,  # 1-based "Document i" numbers
            "depths": [round(100 * (p - 1) / max(len(chosen) - 1, 1)) for p in gold_positions],
        }
        answers = list(question["outputs"])
        # NVIDIA's calibration counts input + f" {answer}" with answer the Python list: " ['Denver Broncos']".
        return Instance(prompt, ANSWER_PREFIX, answers, meta, nvidia_answer=f" {answers}")

    def nvidia_sizing(self) -> NvidiaSizing:
        """qa.py: 10 documents at a time, at most every document of the dataset (tested after stepping up)."""
        return NvidiaSizing(first=10, increment=10, cap=len(self.docs))
