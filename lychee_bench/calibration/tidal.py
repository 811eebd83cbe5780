"""TidalDecode's re-selection layer from calibration statistics (collect.py).

TidalDecode's authors picked the re-selection layer by sweeping it on needle-in-a-haystack runs (their "TD+Lx"
figure; 13 for Llama-3-8B). Here the sweep is replaced by its attention-mass proxy: with TidalDecode's own sets
(top-k per query head, reused by the same head), choose the layer r > selection layer that maximises the
recall summed over all reuse layers — layers between the selection layer and r reuse the first set, layers
after r reuse r's. The layer whose set overlaps least with the selection layer's is recorded beside it.
"""

from __future__ import annotations

import torch


def reuse_recall(recall_query_heads: torch.Tensor, selection_layer: int, reselect_layer: int) -> float:
    """Recall summed over the reuse layers when selecting at `selection_layer` and again at `reselect_layer`."""
    num_layers = recall_query_heads.shape[0]
    first = recall_query_heads[selection_layer, selection_layer + 1 : reselect_layer].sum()
    second = recall_query_heads[reselect_layer, reselect_layer + 1 : num_layers].sum()
    return float(first + second)


def choose_reselect_layer(recall_query_heads: torch.Tensor, selection_layer: int) -> tuple[int, dict]:
    """(re-selection layer, provenance) for a model whose dense layers end at `selection_layer`."""
    num_layers = recall_query_heads.shape[0]
    if selection_layer + 1 >= num_layers:
        raise ValueError(
            f"TidalDecode needs a layer after selection layer {selection_layer}; the model has {num_layers}"
        )
    totals = {r: reuse_recall(recall_query_heads, selection_layer, r) for r in range(selection_layer + 1, num_layers)}
    chosen = max(totals, key=lambda r: (totals[r], -r))
    after = recall_query_heads[selection_layer, selection_layer + 1 :]
    info = {
        "objective": "max over r of summed attention-mass recall of the reuse layers (per query head, same head)",
        "reuse_recall_by_layer": {str(r): round(total, 4) for r, total in totals.items()},
        "least_overlap_layer": selection_layer + 1 + int(after.argmin()),
        "recall_of_selection_set": [round(float(x), 4) for x in after],
    }
    return chosen, info
