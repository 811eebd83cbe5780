"""Reading the final answer of an AIME generation: the last \\boxed{...}, normalised to an integer 0..999.

The prompt asks for the final answer in \\boxed{}, so only a box counts: an answer left unboxed scores 0 (no
fallback to "the last number in the text"). A fallback would credit truncated or rambling outputs by luck, and
sparse-decoding methods differ exactly in how often they lose the format, so the metric would mix the two.

Rules (each one is exercised in tests/test_aime.py):
- The box is `\\boxed{...}` or `\\fbox{...}`, braces balanced (an escaped `\\{` does not count), or the TeX
  short form `\\boxed 5` / `\\boxed5`, read as the run of digits after it (the model's evident intent).
- The LAST box wins; an empty box (an echo of the instruction) is skipped. A last box left open (the budget ran
  out inside it) gives no answer: earlier boxes were drafts the model had moved past.
- Inside the box, formatting is dropped: `$`, TeX spacing (`\\,` `\\;` `\\!` `\\ ` `~` `\\quad`), outer braces,
  `\\text{}` `\\textbf{}` `\\mathrm{}` `\\mathbf{}` `\\mbox{}` and nested boxes around the number, a degree mark
  (`^\\circ`, `^{\\circ}`, `°`), a trailing unit word in `\\text{ minutes}`, a trailing period, and a left-hand
  side (`m+n=33` reads 33).
- What is left must be a non-negative integer, leading zeros allowed (`033` is 33), optionally with a zero
  fraction (`33.0`); anything else (fractions, `%`, lists, words, signs) gives no answer.
- AIME answers are 0..999: a value outside that range (`1000`) gives no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXTRACTION_VERSION = "last-boxed-integer-v1"  # bump when a rule above changes: it goes into the task config
MAX_ANSWER = 999

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_SHORT_FORM = re.compile(r"[ \t]*(\d+)")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|boxed|fbox)\s*\{([^{}]*)\}")
_GROUP = re.compile(r"(?<![A-Za-z\\])\{([^{}]*)\}")  # a bare {...} group (not a command's argument, not \{)
_UNIT_WORD = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_DEGREE = re.compile(r"\^\s*(?:\\circ|\{\s*\\circ\s*\})|°|\\degree(?![A-Za-z])")
_SPACING = re.compile(r"\\(?:[,;:! ]|q?quad(?![A-Za-z]))|~|\$|\s")
_INTEGER = re.compile(r"(\d+)(?:\.0*)?")


@dataclass(frozen=True)
class Box:
    """One box in the text: where it starts and its content (None when its brace is never closed)."""

    start: int
    content: str | None


def find_boxes(text: str) -> list[Box]:
    """Every \\boxed / \\fbox in reading order; nested boxes are listed too (the inner one after the outer)."""
    boxes = []
    for match in _BOX_COMMAND.finditer(text):
        after = match.end()
        rest = text[after:].lstrip(" \t")
        if rest.startswith("{"):
            brace = len(text) - len(rest)
            close = _closing_brace(text, brace)
            boxes.append(Box(match.start(), None if close is None else text[brace + 1 : close]))
        elif short := _SHORT_FORM.match(text, after):
            boxes.append(Box(match.start(), short.group(1)))
        # "\boxed" followed by anything else (e.g. "within \boxed." in prose) is not a box.
    return boxes


def _closing_brace(text: str, open_at: int) -> int | None:
    depth, i = 0, open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character (\{, \}) is text, not a brace
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the box that holds the final answer, per the rules above; None when there is none."""
    for box in reversed(find_boxes(text)):
        if box.content is None:
            return None
        if box.content.strip():
            return box.content
    return None


def normalise_answer(content: str) -> int | None:
    """A box's content as an AIME answer (0..999), or None when it is not one."""
    without_unit = _UNIT_WORD.sub("", content)
    text = without_unit if re.search(r"\d", without_unit) else content  # "\text{minutes}" alone stays (no answer)
    while (unwrapped := _GROUP.sub(r"\1", _WRAPPERS.sub(r"\1", text))) != text:
        text = unwrapped
    text = _DEGREE.sub("", text)
    text = _SPACING.sub("", text)
    text = text.rpartition("=")[2].removesuffix(".")
    match = _INTEGER.fullmatch(text)
    if match is None:
        return None
    value = int(match.group(1))
    return value if value <= MAX_ANSWER else None


def extract_answer(generation: str) -> int | None:
    """The AIME answer a generation gives: its last box, normalised; None when it gives none."""
    content = last_boxed(generation)
    return None if content is None else normalise_answer(content)
