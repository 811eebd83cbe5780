"""`lychee-bench compare BASE NEW`: row-by-row regression check between two result sets.

Rows are matched on (method, task, subtask, ctx, batch, model, metric). What counts as a regression depends
on the metric's kind, read from its name:

- correctness (`passed`, `pass`, `correct`): any pass -> fail. No tolerance.
- error (a name containing `error`, e.g. `max_abs_error`): lower is better; a regression when
  new > old + tol, tol absolute, default 1e-5.
- latency (a name with a time unit as a `_` part, `ms`, `us`, `ns`, or ending `_s`, e.g. `median_ms`,
  `decode_ms_per_token`; or containing `latency`/`time`/`elapsed`): lower is better; a
  regression when new > old + max(tol * old, z * se), tol relative, default 0.10.
- rate (a name ending `per_s` or starting `speedup`/`throughput`): higher is better; a regression when
  new < old - max(tol * old, z * se), tol relative, default 0.10.
- quality (everything else: 0-100 scores): a regression when new < old - max(tol, z * se), tol in points,
  default 0, where se = sqrt(se_old^2 + se_new^2) (a NaN standard error counts as 0). When that se term is 0
  and either side has at most 5 samples (no spread to judge by), a floor of 5 points stands in for it
  (z > 0 only; z = 0 asks for exact agreement).

z defaults to 2. `--tol NAME=VALUE` overrides the tolerance of one metric (NAME a metric) or of one kind
(NAME one of the kinds above); a metric override wins over a kind override.

Paired samples. When both sides hold the per-sample records of a quality row (run folders do), its samples are
matched on (index, input length, gold answers): the same prompts. The gold answers keep apart samples that share an
index but not a question (AIME's index is problem * k + draw, so runs of another k number problems differently).
The row is then judged on those pairs: a regression when the mean paired difference drops by more than tol points
(default 0). Decoding is reproducible per sample (greedy, or
sampling seeded per sample), so the same prompt going from right to wrong is a change in what the method computes,
not noise: at 2 samples a drop from 100 to 50 fails, which the unpaired rule above lets through. `down` / `up`
count the samples that got worse / better.

Rows only in NEW are listed as `new` (never a failure); rows only in BASE as `missing` (a warning, or a
failure with `fail_on_missing`). A comparison in which no row of NEW matches a row of BASE fails as bad input (exit
2: nothing was checked, the two sides are not results of the same runs) unless `allow_empty` is set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lychee_bench.harness import records
from lychee_bench.harness.records import GROUP_FIELDS

KINDS = ("correctness", "error", "latency", "rate", "quality")
DEFAULT_TOLERANCE = {"correctness": 0.0, "error": 1e-5, "latency": 0.10, "rate": 0.10, "quality": 0.0}
DEFAULT_Z = 2.0
FEW_SAMPLES = 5
FEW_SAMPLES_FLOOR = 5.0  # points
EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


def metric_kind(metric: str) -> str:
    name = str(metric).lower()
    if name in ("passed", "pass", "correct"):
        return "correctness"
    if "error" in name:
        return "error"
    if name.endswith("per_s") or name.startswith(("speedup", "throughput")):
        return "rate"
    if name.endswith("_s") or {"ms", "us", "ns", "sec", "seconds"} & set(name.split("_")):
        return "latency"
    if any(word in name for word in ("latency", "time", "elapsed")):
        return "latency"
    return "quality"


def parse_tolerances(pairs: list[str]) -> dict[str, float]:
    """['median_ms=0.05', 'quality=2'] -> {'median_ms': 0.05, 'quality': 2.0}; bad pairs raise ValueError."""
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            found[name.strip()] = float(value)
            if not math.isfinite(found[name.strip()]) or found[name.strip()] < 0:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"bad --tol {pair!r}: write NAME=NUMBER, NAME a metric (e.g. median_ms=0.05) or a kind "
                f"({', '.join(KINDS)}), NUMBER a finite tolerance >= 0"
            ) from None
    return found


def check_tolerance_names(tolerances: dict[str, float], metrics: set[str]) -> None:
    """ValueError naming each --tol NAME that is neither a kind nor a metric of the results (a typo would otherwise
    leave the default tolerance in force, unnoticed)."""
    unknown = sorted(name for name in tolerances if name not in KINDS and name not in metrics)
    if unknown:
        raise ValueError(
            f"--tol {', '.join(unknown)}: not a kind ({', '.join(KINDS)}) nor a metric of these results "
            f"({', '.join(sorted(metrics)) or 'none'}); fix the name"
        )


@dataclass
class Rules:
    tolerances: dict[str, float] = field(default_factory=dict)
    z: float = DEFAULT_Z
    fail_on_missing: bool = False
    allow_empty: bool = False

    def tolerance(self, metric: str) -> float:
        if metric in self.tolerances:
            return self.tolerances[metric]
        kind = metric_kind(metric)
        return self.tolerances.get(kind, DEFAULT_TOLERANCE[kind])


def _se(*values: Any) -> float:
    total = 0.0
    for value in values:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            total += float(value) ** 2
    return math.sqrt(total)


def judge(old: dict[str, Any], new: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """One matched pair: the difference, the allowed change, and whether it is a regression."""
    metric = old["metric"]
    kind = metric_kind(metric)
    tol = rules.tolerance(metric)
    a, b = float(old["value"]), float(new["value"])
    se_term = rules.z * _se(old.get("stderr"), new.get("stderr"))
    if kind == "correctness":
        allowed = 0.0
        regression = a > 0 and b < a  # passed (100) before, fails (or partly fails) now
    elif kind == "error":
        allowed = tol
        regression = b > a + allowed
    elif kind == "latency":
        allowed = max(tol * abs(a), se_term)
        regression = b > a + allowed
    elif kind == "rate":
        allowed = max(tol * abs(a), se_term)
        regression = b < a - allowed
    else:
        few = min(int(old.get("samples") or 0), int(new.get("samples") or 0)) <= FEW_SAMPLES
        if se_term == 0 and few and rules.z > 0:
            se_term = FEW_SAMPLES_FLOOR
        allowed = max(tol, se_term)
        regression = b < a - allowed
    if any(math.isnan(v) for v in (a, b)):
        regression = False
    return {
        "kind": kind,
        "old": a,
        "new": b,
        "diff": b - a,
        "allowed": allowed,
        "within": not regression,
        "status": "REGRESSION" if regression else "ok",
    }


def judge_paired(old: dict[str, Any], new: dict[str, Any], pairs: list[tuple[float, float]], rules: Rules) -> dict:
    """A quality row judged on its paired samples (old score, new score of the same prompt)."""
    tol = rules.tolerance(old["metric"])
    diff = sum(b - a for a, b in pairs) / len(pairs)
    regression = -diff > tol
    return {
        "kind": "quality",
        "old": float(old["value"]),
        "new": float(new["value"]),
        "diff": diff,
        "allowed": tol,
        "within": not regression,
        "status": "REGRESSION" if regression else "ok",
        "pairs": len(pairs),
        "down": sum(1 for a, b in pairs if b < a),
        "up": sum(1 for a, b in pairs if b > a),
    }


@dataclass
class Comparison:
    rows: list[dict[str, Any]]
    warnings: list[str]
    rules: Rules

    def count(self, status: str) -> int:
        return sum(1 for row in self.rows if row["status"] == status)

    @property
    def compared(self) -> int:
        """Rows present on both sides and judged."""
        return self.count("ok") + self.count("REGRESSION")

    @property
    def exit_code(self) -> int:
        failing = self.count("REGRESSION") + (self.count("missing") if self.rules.fail_on_missing else 0)
        if self.compared == 0 and not self.rules.allow_empty:  # nothing checked: the inputs do not match
            return EXIT_BAD_INPUT
        return EXIT_REGRESSION if failing else EXIT_OK

    def summary(self) -> str:
        parts = [
            f"{self.count('ok')} within tolerance",
            f"{self.count('REGRESSION')} regression(s)",
            f"{self.count('missing')} missing from NEW" + (" (failing)" if self.rules.fail_on_missing else ""),
            f"{self.count('new')} only in NEW",
        ]
        verdict = "FAIL" if self.exit_code else "PASS"
        if self.compared == 0:
            why = "accepted (--allow-empty)" if self.rules.allow_empty else "pass --allow-empty to accept that"
            parts.insert(0, f"nothing compared: no row of NEW matches a row of BASE, {why}")
        return f"{verdict}: " + ", ".join(parts)

    def table(self, only_changes: bool = False) -> str:
        import pandas as pd

        rows = [r for r in self.rows if not only_changes or r["status"] != "ok" or r["diff"] != 0]
        if not rows:
            return "(no rows to show)"
        frame = pd.DataFrame(rows)
        columns = [*GROUP_FIELDS, "old", "new", "diff", "allowed", "pairs", "down", "up", "within", "status"]
        frame = frame[[c for c in columns if c in frame.columns]]
        return frame.to_string(index=False, float_format=lambda v: f"{v:.6g}", na_rep="-")

    def to_json(self) -> str:
        def clean(value: Any) -> Any:
            return None if isinstance(value, float) and math.isnan(value) else value

        rows = [{k: clean(v) for k, v in row.items()} for row in self.rows]
        return json.dumps(
            {"summary": self.summary(), "exit_code": self.exit_code, "warnings": self.warnings, "rows": rows},
            indent=1,
        )


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(f) for f in GROUP_FIELDS)


def _index(rows: list[dict[str, Any]], side: str, notes: list[str]) -> dict[tuple, dict[str, Any]]:
    index: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = _key(row)
        if key in index:
            notes.append(f"{side}: {key} appears in more than one result set; using the one from {row.get('source')}")
        index[key] = row
    return index


def sample_scores(sample_records: list[dict[str, Any]]) -> dict[tuple, dict[tuple, float]]:
    """Row key (GROUP_FIELDS) -> {(index, input tokens, gold answers): score} from sample records (the latest of a
    sample)."""
    latest = {records.sample_key(r): r for r in records.iter_sample_records(sample_records)}
    scores: dict[tuple, dict[tuple, float]] = {}
    for record in latest.values():
        key = tuple(records.label_of(record) if f == "method" else record.get(f) for f in GROUP_FIELDS)
        sample = (record.get("index"), record.get("input_tokens"), tuple(map(str, record.get("references") or ())))
        scores.setdefault(key, {})[sample] = float(record["value"])
    return scores


def compare_rows(
    base: list[dict[str, Any]],
    new: list[dict[str, Any]],
    rules: Rules | None = None,
    base_samples: dict[tuple, dict[tuple, float]] | None = None,
    new_samples: dict[tuple, dict[tuple, float]] | None = None,
) -> Comparison:
    """Match rows on GROUP_FIELDS and judge each pair; quality rows with per-sample scores on both sides (the
    `sample_scores` of each side) are judged on their paired samples."""
    rules = rules or Rules()
    base_samples, new_samples = base_samples or {}, new_samples or {}
    notes: list[str] = []
    other_prompts: list[str] = []  # shown first: they say the comparison itself is weaker than it looks
    old_index, new_index = _index(base, "BASE", notes), _index(new, "NEW", notes)
    out = []
    for key in sorted(old_index.keys() | new_index.keys(), key=lambda k: tuple(str(v) for v in k)):
        ident = dict(zip(GROUP_FIELDS, key, strict=True))
        old, fresh = old_index.get(key), new_index.get(key)
        nan = float("nan")
        if old is None:
            out.append(
                {**ident, "kind": metric_kind(ident["metric"]), "old": nan, "new": fresh["value"]} | _blank("new")
            )
        elif fresh is None:
            out.append(
                {**ident, "kind": metric_kind(ident["metric"]), "old": old["value"], "new": nan} | _blank("missing")
            )
            notes.append(f"missing from NEW: {' / '.join(str(v) for v in key)}")
        else:
            before, after = base_samples.get(key, {}), new_samples.get(key, {})
            pairs = [(before[sample], after[sample]) for sample in sorted(before.keys() & after.keys(), key=str)]
            unmatched = len(after) - len(pairs)
            if before and unmatched and metric_kind(ident["metric"]) == "quality":
                other_prompts.append(
                    f"{' / '.join(str(v) for v in key)}: {unmatched} of NEW's {len(after)} samples have no twin in "
                    "BASE (same index, input length and answers): the two ran other prompts there, and the row is "
                    + (f"judged on the {len(pairs)} pairs alone" if pairs else "judged on its means, unpaired")
                    + "; compare the task's identity in both manifests (its generator and asset hashes, e.g. the "
                    "wonderwords version)"
                )
            if pairs and metric_kind(ident["metric"]) == "quality":
                out.append({**ident, **judge_paired(old, fresh, pairs, rules)})
            else:
                out.append({**ident, **judge(old, fresh, rules)})
    return Comparison(out, other_prompts + notes, rules)


def _blank(status: str) -> dict[str, Any]:
    return {"diff": float("nan"), "allowed": float("nan"), "within": status != "missing", "status": status}


def compare_paths(base: Path, new: Path, rules: Rules | None = None) -> Comparison:
    """Load both sides (files or folders; see report.sources) and compare. Raises ResultsError on bad input."""
    from lychee_bench.regress.sources import all_rows, load_results

    problems: list[str] = []
    base_sets = load_results(base, problems)
    new_sets = load_results(new, problems, first_label=len(base_sets) + 1)
    base_samples = sample_scores([r for result_set in base_sets for r in result_set.samples])
    new_samples = sample_scores([r for result_set in new_sets for r in result_set.samples])
    metrics = {str(row.get("metric")) for row in all_rows(base_sets) + all_rows(new_sets)}
    check_tolerance_names((rules or Rules()).tolerances, metrics)
    comparison = compare_rows(all_rows(base_sets), all_rows(new_sets), rules, base_samples, new_samples)
    comparison.warnings = [f"unreadable: {p}" for p in problems] + comparison.warnings
    return comparison


def compare_command(
    base: Path,
    new: Path,
    tol: list[str],
    z: float = DEFAULT_Z,
    fail_on_missing: bool = False,
    format: str = "table",
    changes_only: bool = False,
    allow_empty: bool = False,
    echo: Any = print,
    echo_err: Any = print,
) -> int:
    """What `lychee-bench compare` does; returns the exit code (0 pass, 1 regression, 2 bad input)."""
    from lychee_bench.regress.sources import ResultsError

    if format not in ("table", "json"):
        echo_err(f"error: unknown --format {format!r}; use table or json")
        return EXIT_BAD_INPUT
    try:
        rules = Rules(parse_tolerances(tol), z, fail_on_missing, allow_empty)
        comparison = compare_paths(base, new, rules)
    except (ResultsError, ValueError) as error:
        echo_err(f"error: {error}")
        return EXIT_BAD_INPUT
    shown = comparison.warnings if len(comparison.warnings) <= 20 else comparison.warnings[:20]
    for warning in shown:
        echo_err(f"warning: {warning}")
    if len(comparison.warnings) > len(shown):
        echo_err(f"warning: ... and {len(comparison.warnings) - len(shown)} more")
    if format == "json":
        echo(comparison.to_json())
    else:
        echo(comparison.table(only_changes=changes_only))
        echo(comparison.summary())
    if comparison.exit_code == EXIT_BAD_INPUT:
        echo_err(
            f"error: nothing compared: no row of {new} matches a row of {base} (rows match on "
            f"{', '.join(GROUP_FIELDS)}); compare results of the same runs or suite, or pass --allow-empty"
        )
    return comparison.exit_code
