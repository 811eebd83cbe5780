"""One visual identity per method across every figure: colour and marker fixed by the method's name.

Each method's colour and marker is declared on its class (`Method.plot_style`, methods/base.py); a variant of a
method (its bracket options, `lychee[granularity=block]`, or a trailing ` (subtask)`) keeps its
method's colour and marker and gets its own line style. lychee is drawn first-class: thicker, on top. A method
this file does not know (a plugin) gets a colour picked from its name's hash among colours no built-in uses.
Also: the log-2 context axis labelled in K, a legend outside the axes, and a title built from the records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

# Lines that are not a method: stock transformers' decode step, timed by `bench` as a second reference.
REFERENCE_STYLES: dict[str, tuple[str, str]] = {"transformers": ("#7f7f7f", "*")}
# Names other files write for the same thing (the kernel bench's rows): drawn as the method they stand for.
ALIASES = {"lychee_layer": "lychee", "sdpa_enable_gqa": "full", "sdpa": "full"}
# For methods that declare no style: none of these is a built-in's colour (tests/test_plot_style.py checks).
EXTRA_COLOURS = ("#17becf", "#bcbd22", "#e377c2", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
EXTRA_MARKERS = ("h", "p", "<", ">", "d", "8", "H")
VARIANT_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 1, 1)))
FIRST_CLASS = "lychee"


def method_styles() -> dict[str, tuple[str, str]]:
    """name -> (colour, marker): every registered method that declares one, and the non-method references."""
    from lychee_bench.harness.catalog import METHODS

    found = dict(REFERENCE_STYLES)
    for name in METHODS.names():
        try:
            style = getattr(METHODS.get(name), "plot_style", None)
        except ImportError:  # a plugin that does not load here: drawn in a picked colour
            continue
        if style is not None:
            found[name] = (str(style[0]), str(style[1]))
    return found


def method_of(label: str) -> str:
    """The method a line belongs to: `lychee[granularity=block] (vt)` -> `lychee`; aliases resolved."""
    name = str(label).split(" (", 1)[0].partition("[")[0].strip()
    return ALIASES.get(name, name)


def _hashed(name: str, choices: tuple, taken: set) -> Any:
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(choices)
    for step in range(len(choices)):
        if choices[(start + step) % len(choices)] not in taken:
            return choices[(start + step) % len(choices)]
    return choices[start]  # more plugin methods in one figure than extra colours: repeat (no better choice)


def figure_styles(labels: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Matplotlib keyword arguments (color, marker, linestyle, linewidth, zorder, label) for every label of a
    figure. The plain method gets a solid line; its variants, in sorted order, the next line styles."""
    unique = sorted(set(map(str, labels)), key=lambda label: (method_of(label), label != method_of(label), label))
    declared = method_styles()
    colours: dict[str, tuple[str, str]] = {}
    for method in dict.fromkeys(method_of(label) for label in unique):
        if method in declared:
            colours[method] = declared[method]
    for method in dict.fromkeys(method_of(label) for label in unique):
        if method not in colours:
            taken = {colour for colour, _ in colours.values()}
            colours[method] = (_hashed(method, EXTRA_COLOURS, taken), _hashed(method, EXTRA_MARKERS, set()))
    styles, seen = {}, {}
    for label in unique:
        method = method_of(label)
        index = seen.get(method, 0)
        seen[method] = index + 1
        colour, marker = colours[method]
        first = method == FIRST_CLASS
        styles[label] = {
            "color": colour,
            "marker": marker,
            "linestyle": VARIANT_LINESTYLES[index % len(VARIANT_LINESTYLES)],
            "linewidth": 2.6 if first else 1.4,
            "markersize": 6 if first else 4.5,
            "zorder": 5 if first else 2,
            "label": label,
        }
    return styles


def context_label(tokens: float) -> str:
    """4096 -> '4K', 131072 -> '128K', 1536 -> '1.5K', 320 -> '320'."""
    if tokens >= 1024:
        return f"{tokens / 1024:g}K"
    return f"{tokens:g}"


def context_axis(axis, contexts: Iterable[float], label: str = "context (tokens)") -> None:
    """Log-2 x axis with a tick at every power of two the data spans (and at each context drawn), in K."""
    import math

    values = sorted({float(c) for c in contexts if c and c > 0})
    axis.set_xscale("log", base=2)
    if values:
        low, high = math.floor(math.log2(values[0])), math.ceil(math.log2(values[-1]))
        ticks = sorted({2.0**p for p in range(low, high + 1)} | set(values))
        if len(ticks) > 12:  # many odd contexts: powers of two only
            ticks = [2.0**p for p in range(low, high + 1)]
        axis.set_xticks(ticks, [context_label(t) for t in ticks])
        axis.minorticks_off()
    axis.set_xlabel(label)


def legend_outside(fig, axes) -> None:
    """One legend for the whole figure, right of the last axes (entries gathered from all axes, deduplicated)."""
    handles: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        axes[-1].legend(
            handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
            fontsize=7, frameon=False,
        )  # fmt: skip


def records_title(what: str, records: Iterable[dict[str, Any]]) -> str:
    """`what` followed by the model(s), batch(es), sparse budget(s) and hardware the records state."""
    records = list(records)

    def values(get) -> list[str]:
        found = set()
        for record in records:
            value = get(record)
            if value is not None and value != "":
                found.add(value)
        return [str(v) for v in sorted(found, key=lambda v: (isinstance(v, str), v))]

    def device(record):
        dev = record.get("device")
        return dev.get("name") if isinstance(dev, dict) else dev

    def budget(record):
        value = (record.get("method_config") or {}).get("budget")
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    parts = [", ".join(values(lambda r: r.get("model")))]
    if batches := values(lambda r: r.get("batch")):
        parts.append("batch " + ", ".join(batches))
    if budgets := values(budget):
        parts.append("budget " + ", ".join(budgets))
    parts.append(", ".join(values(device)))
    return what + ": " + " · ".join(p for p in parts if p)
