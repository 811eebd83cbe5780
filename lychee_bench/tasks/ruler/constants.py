"""RULER's prompt strings and the 13 subtask configurations.

The strings must be character-for-character those of NVIDIA RULER (as shipped in nvidia-long-context-eval
26.3: data/synthetic/constants.py, synthetic.yaml and the generator scripts), typos included ("assgined"),
because models are scored on these exact prompts. tests/test_ruler_generate.py compares them with the
installed package's files.
"""

from __future__ import annotations

from typing import Any

# The RULER release these generators follow, recorded in every result.
RULER_REFERENCE = "NVIDIA RULER synthetic generators, as ported in nvidia-long-context-eval==26.3"
# 2: NVIDIA's haystack sizing (the default) beside the tight fit, niah's asked key drawn after the context.
GENERATOR_VERSION = "lychee-ruler-2"

# Per task family: the user-facing template, the answer prefix the model continues, and how many tokens
# it may generate (counted inside the context length).
FAMILIES: dict[str, dict[str, Any]] = {
    "niah": {
        "tokens_to_generate": 128,
        "template": (
            "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it."
            " I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
            "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
        ),
        "answer_prefix": " The special magic {type_needle_v} for {query} mentioned in the provided text are",
    },
    "variable_tracking": {
        "tokens_to_generate": 30,
        "template": (
            "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
            "Question: Find all variables that are assigned the value {query} in the text above."
        ),
        "answer_prefix": (
            " Answer: According to the chain(s) of variable assignment in the text above,"
            " {num_v} variables are assgined the value {query}, they are: "
        ),
    },
    "common_words_extraction": {
        "tokens_to_generate": 120,
        "template": (
            "Below is a numbered list of words. In these words, some appear more often than others."
            " Memorize the ones that appear most often.\n{context}\n"
            "Question: What are the 10 most common words in the above list?"
        ),
        "answer_prefix": " Answer: The top 10 words that appear most often in the list are:",
    },
    "freq_words_extraction": {
        "tokens_to_generate": 50,
        "template": (
            "Read the following coded text and track the frequency of each coded word. Find the three most"
            " frequently appeared coded words. {context}\nQuestion: Do not provide any explanation."
            " Please ignore the dots '....'. What are the three most frequently appeared words in the above"
            " coded text?"
        ),
        "answer_prefix": " Answer: According to the coded text above, the three most frequently appeared words are:",
    },
    "qa": {
        "tokens_to_generate": 32,
        "template": (
            "Answer the question based on the given documents. Only give me the answer and do not output any"
            " other words.\n\nThe following are given documents.\n\n{context}\n\n"
            "Answer the question based on the given documents. Only give me the answer and do not output any"
            " other words.\n\nQuestion: {query}"
        ),
        "answer_prefix": " Answer:",
    },
}

# The 13 subtasks, in RULER's order, with the arguments of synthetic.yaml.
SUBTASKS: dict[str, dict[str, Any]] = {
    "niah_single_1": {
        "task": "niah",
        "args": {
            "type_haystack": "repeat",
            "type_needle_k": "words",
            "type_needle_v": "numbers",
            "num_needle_k": 1,
            "num_needle_v": 1,
            "num_needle_q": 1,
        },
    },
    "niah_single_2": {
        "task": "niah",
        "args": {
            "type_haystack": "essay",
            "type_needle_k": "words",
            "type_needle_v": "numbers",
            "num_needle_k": 1,
            "num_needle_v": 1,
            "num_needle_q": 1,
        },
    },
    "niah_single_3": {
        "task": "niah",
        "args": {
            "type_haystack": "essay",
            "type_needle_k": "words",
            "type_needle_v": "uuids",
            "num_needle_k": 1,
            "num_needle_v": 1,
            "num_needle_q": 1,
        },
    },
    "niah_multikey_1": {
        "task": "niah",
        "args": {
            "type_haystack": "essay",
            "type_needle_k": "words",
            "type_needle_v": "numbers",
            "num_needle_k": 4,
            "num_needle_v": 1,
            "num_needle_q": 1,
        },
    },
    "niah_multikey_2": {
        "task": "niah",
        "args": {
            "type_haystack": "needle",
            "type_needle_k": "words",
            "type_needle_v": "numbers",
            "num_needle_k": 1,
            "num_needle_v": 1,
            "num_needle_q": 1,
        },
    },
    "niah_multikey_3": {
        "task": "niah",
        "args": {
            "type_haystack": "needle",
            "type_needle_k": "uuids",
            "type_needle_v": "uuids",
            "num_needle_k": 1,
            "num_needle_v": 1,
            "num_needle_q": 1,
        },
    },
    "niah_multivalue": {
        "task": "niah",
        "args": {
            "type_haystack": "essay",
            "type_needle_k": "words",
            "type_needle_v": "numbers",
            "num_needle_k": 1,
            "num_needle_v": 4,
            "num_needle_q": 1,
        },
    },
    "niah_multiquery": {
        "task": "niah",
        "args": {
            "type_haystack": "essay",
            "type_needle_k": "words",
            "type_needle_v": "numbers",
            "num_needle_k": 1,
            "num_needle_v": 1,
            "num_needle_q": 4,
        },
    },
    "vt": {"task": "variable_tracking", "args": {"num_chains": 1, "num_hops": 4}},
    "cwe": {"task": "common_words_extraction", "args": {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}},
    "fwe": {"task": "freq_words_extraction", "args": {"alpha": 2.0}},
    "qa_1": {"task": "qa", "args": {"dataset": "squad"}},
    "qa_2": {"task": "qa", "args": {"dataset": "hotpotqa"}},
}

# niah.py
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
REPEAT_HAYSTACK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
# Needles go at one of 40 evenly spaced depths (percent of the essay's sentences), rounded like numpy does.
DEPTHS: list[int] = [round(100 * i / 39) for i in range(40)]

# variable_tracking.py (the same sentences as the repeat haystack, one line per copy)
VT_NOISE = REPEAT_HAYSTACK + "\n"

# qa.py
DOCUMENT_PROMPT = "Document {i}:\n{document}"


def metric_for(family: str) -> str:
    """RULER scores QA by 'any gold answer found' and every other family by 'all gold strings found'."""
    return "string_match_part" if family == "qa" else "string_match_all"
