"""Kascade's anchor layers by dynamic programming and its head map, from calibration statistics (collect.py).

Layer value: with anchors a_0 = 0 < a_1 < ... , every layer j is governed by the last anchor a <= j and is worth
W[a, j] = mean over j's KV heads of (max over a's KV heads of recall[a, j, h_j, h_a]) (an anchor governs itself
with recall 1). The anchors maximise the sum of W over all layers for a given count (SPEC §4: the total
similarity); the head map sends each head of a reuse layer to the anchor head with the highest recall (anchor
layers map to themselves).

Difference from Kascade's code: its `select_layers` also multiplies W[a, j] by the layer importance of j
(1 - cos(x, x + attention(x))). That weighting is available (`importance=True`, `calibrate --importance`) but off
by default: on SmolLM2-135M the importance of layers 2-23 is ~0.01 against 0.16 for layer 1, so the weighted
choice ([0, 1, 3, 21, 24]) left layers 4-20 on one anchor's set and failed RULER niah_single_2 at 2048 tokens
(0/2 where full attention scored 2/2), while the unweighted choice passed (2/2).
"""

from __future__ import annotations

import torch

from lychee_bench.calibration.collect import SetStatistics
from lychee_bench.methods.artifacts import governing_anchor

ANCHOR_COUNT_RULE = "max(2, round(5 * num_layers / 32)): Kascade uses 5 anchors (layer 0 included) for 32 layers"


def default_anchor_count(num_layers: int) -> int:
    return min(num_layers, max(2, round(5 * num_layers / 32)))


def layer_values(recall: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor:
    """W [L, L]: W[a, j] = mean_h_j max_h_a recall[a, j, h_j, h_a] (times importance[j] if given), -inf below."""
    values = recall.amax(dim=-1).mean(dim=-1)
    if importance is not None:
        values = values * importance[None, :]
    upper = torch.ones_like(values, dtype=torch.bool).triu()
    return values.masked_fill(~upper, float("-inf"))


def choose_anchors(values: torch.Tensor, count: int) -> list[int]:
    """The `count` anchor layers (layer 0 first) maximising sum_j values[governing anchor of j, j].

    best[c][e] is the best total of layers 0..e-1 covered by c anchors whose last segment ends at layer e-1.
    """
    num_layers = values.shape[0]
    if not 1 <= count <= num_layers:
        raise ValueError(f"anchor count {count} must lie in 1..{num_layers} (the model's layers)")
    rows = values.double().clamp(min=-1e30).tolist()
    prefix = [[0.0] * (num_layers + 1) for _ in range(num_layers)]  # prefix[a][e] = sum of rows[a][a:e]
    for a in range(num_layers):
        for e in range(a + 1, num_layers + 1):
            prefix[a][e] = prefix[a][e - 1] + rows[a][e - 1]
    minus_inf = float("-inf")
    best = [[minus_inf] * (num_layers + 1) for _ in range(count + 1)]
    back = [[-1] * (num_layers + 1) for _ in range(count + 1)]
    for e in range(1, num_layers + 1):
        best[1][e] = prefix[0][e]
    for c in range(2, count + 1):
        for e in range(c, num_layers + 1):
            for a in range(c - 1, e):  # the last anchor, opening the segment a..e-1
                total = best[c - 1][a] + prefix[a][e]
                if total > best[c][e]:
                    best[c][e], back[c][e] = total, a
    anchors, end = [], num_layers
    for c in range(count, 1, -1):
        end = back[c][end]
        anchors.append(end)
    return [0, *reversed(anchors)]


def head_mapping(recall: torch.Tensor, anchors: list[int]) -> list[list[int]]:
    """[L][Hkv]: for each head of a reuse layer, the head of its governing anchor with the highest recall."""
    num_layers, num_kv_heads = recall.shape[0], recall.shape[2]
    table = []
    for layer in range(num_layers):
        if layer in anchors:
            table.append(list(range(num_kv_heads)))
        else:
            anchor = governing_anchor(anchors, layer)
            table.append(recall[anchor, layer].argmax(dim=-1).tolist())
    return table


def calibrate_kascade(
    stats: SetStatistics, count: int | None = None, importance: bool = False
) -> tuple[list[int], list[list[int]], dict]:
    """(anchors, head_map, provenance) from the statistics; `count` None uses ANCHOR_COUNT_RULE; `importance`
    weights each layer by its importance as Kascade's code does."""
    num_layers = stats.recall.shape[0]
    count = default_anchor_count(num_layers) if count is None else count
    values = layer_values(stats.recall, stats.importance if importance else None)
    anchors = choose_anchors(values, count)
    table = head_mapping(stats.recall, anchors)
    layer_recall = stats.recall.amax(dim=-1).mean(dim=-1)
    covered = [round(float(layer_recall[governing_anchor(anchors, j), j]), 4) for j in range(num_layers)]
    info = {
        "anchor_count": count,
        "anchor_count_rule": ANCHOR_COUNT_RULE if count == default_anchor_count(num_layers) else "given",
        "objective": "max sum over layers j of "
        + ("importance[j] * " if importance else "")
        + "mean_h max_h' recall[anchor(j), j, h, h'] (dynamic programming; layer 0 always an anchor)",
        "importance_weighted": importance,
        "head_map": "calibrated: argmax over the governing anchor's KV heads of attention-mass recall",
        "layer_recall": covered,
        "importance": [round(float(x), 5) for x in stats.importance],
    }
    return anchors, table, info
