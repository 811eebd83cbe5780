"""One PNG that shows how a head-role training run went, drawn from its JSONL log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _legend_below(ax, handles: list | None = None) -> None:
    """The legend under the axes (below its x label), never over the curves."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)


def plot_training(records: list[dict[str, Any]], roles: torch.Tensor, rule: str, path: Path) -> Path:
    """Loss and distillation, density vs target, λ and lr over steps; per-head gate scores; the final roles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax = axes[0, 0]
    ax.plot(steps, [r["loss"] for r in records], label="loss (distill + λ·c)")
    ax.plot(steps, [r["distill"] for r in records], label="distill (MSE of final hidden states)")
    ax.set_yscale("log")
    ax.set_title("loss")
    ax.set_xlabel("step")
    _legend_below(ax)

    ax = axes[0, 1]
    ax.plot(steps, [r["density"] for r in records], label="expected density P(z≠0), layers 1..")
    ax.plot(steps, [r["target"] for r in records], "--", label="target")
    ax.plot(steps, [r["z_mean"] for r in records], alpha=0.4, label="sampled z, mean over layers 1..")
    ax.set_ylim(0, 1)
    ax.set_title("density")
    ax.set_xlabel("step")
    _legend_below(ax)

    ax = axes[0, 2]
    ax.plot(steps, [r["lambda"] for r in records], label="λ")
    ax.set_title("Lagrange multiplier λ and learning rate")
    twin = ax.twinx()
    twin.plot(steps, [r["lr"] for r in records], color="tab:orange", alpha=0.6, label="lr (right axis)")
    ax.set_xlabel("step")
    _legend_below(ax, ax.get_lines() + twin.get_lines())

    scores = torch.tensor([r["score"] for r in records], dtype=torch.float32)  # [records, L, H]
    num_layers, num_kv_heads = scores.shape[1], scores.shape[2]
    ax = axes[1, 0]
    image = ax.imshow(
        scores.flatten(1).T.numpy(),
        aspect="auto",
        origin="lower",
        vmin=0,
        vmax=1,
        extent=(steps[0] - 0.5, steps[-1] + 0.5, 0, num_layers * num_kv_heads),
        cmap="viridis",
    )
    ax.set_title(f"per-head score ({rule}) over steps")
    ax.set_xlabel("step")
    ax.set_ylabel("head (layer·H + kv head)")
    fig.colorbar(image, ax=ax)

    ax = axes[1, 1]
    image = ax.imshow(scores[-1].T.numpy(), aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
    marked = torch.nonzero(roles)
    ax.scatter(marked[:, 0].numpy(), marked[:, 1].numpy(), marker="x", color="red", s=20, label="retrieval")
    ax.set_yticks(range(num_kv_heads))
    ax.set_title(f"final score ({rule}) and roles")
    ax.set_xlabel("layer")
    ax.set_ylabel("KV head")
    _legend_below(ax)
    fig.colorbar(image, ax=ax)

    ax = axes[1, 2]
    ax.plot(steps, [r["kept_fraction"] for r in records])
    ax.set_ylim(0, 1)
    ax.set_title("fraction of visible keys the sparse path kept")
    ax.set_xlabel("step")

    fig.suptitle(f"head-role training: {len(records)} logged steps, {int(roles.sum())} retrieval heads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def replot(folder: Path) -> Path:
    """Draw a training folder's `training.png` again from its log (`train_log.jsonl`, or `.gz`) and `roles.json`."""
    import json

    from lychee_bench.harness.records import open_text
    from lychee_bench.methods.roles import load_roles_file

    log = folder / "train_log.jsonl"
    log = log if log.exists() else folder / "train_log.jsonl.gz"
    if not log.exists() or not (folder / "roles.json").exists():
        raise FileNotFoundError(f"{folder} has no train_log.jsonl(.gz) and roles.json: give a train-heads --out folder")
    with open_text(log) as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    roles = load_roles_file(folder / "roles.json", str(folder))  # checked like any roles file
    return plot_training(records, roles.retrieval, roles.info["threshold_rule"]["name"], folder / "training.png")


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["."]:
        try:
            print(replot(Path(name)))
        except FileNotFoundError as error:
            sys.exit(f"error: {error}")
