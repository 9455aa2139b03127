"""Figures for the evaluation report (matplotlib, Agg backend, returned as PNG bytes)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _fig(w: float = 4.2, h: float = 3.6) -> tuple[Any, Any]:
    """A new matplotlib figure and axes (Agg backend) of ``w`` x ``h`` inches."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h), dpi=110)


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes (tight layout); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def roc_pr(curves: dict[str, dict[str, list[float]]]) -> tuple[bytes, bytes]:
    """(ROC, precision-recall) figures as PNG bytes, one curve per class of ``curves``."""
    fig, ax = _fig()
    for name, c in curves.items():
        if c.get("fpr"):
            ax.plot(c["fpr"], c["tpr"], label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="sensitivity", title="ROC (one vs rest)")
    ax.legend(fontsize=7)
    roc = _png(fig)
    fig, ax = _fig()
    for name, c in curves.items():
        if c.get("recall"):
            ax.plot(c["recall"], c["precision"], label=name)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return roc, _png(fig)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> bytes:
    """The confusion matrix (rows = true, columns = predicted) with counts, as PNG bytes."""
    m = np.asarray(matrix)
    fig, ax = _fig(4.4, 4.0)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), [c[:14] for c in classes], rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), [c[:14] for c in classes], fontsize=7)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    return _png(fig)


def reliability(rel: dict[str, list[float | None]]) -> bytes:
    """The reliability diagram (observed accuracy per confidence bin against the diagonal) as PNG bytes."""
    fig, ax = _fig()
    centres = np.asarray(rel["centres"], dtype=float)
    acc = np.asarray([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
    ax.bar(centres, acc, width=1 / max(len(centres), 1), edgecolor="k", alpha=0.7, label="observed")
    ax.plot([0, 1], [0, 1], "r--", lw=1, label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    return _png(fig)


def training_curves(run_dir: Path) -> list[tuple[str, bytes]]:
    """Loss parts, validation metrics and attention-vs-mask error from a run's metrics.jsonl files."""
    out = []
    for stage in ("pretrain", "train"):
        path = run_dir / stage / "metrics.jsonl"
        if not path.is_file():
            continue
        rows: list[dict[str, Any]] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        groups = {"losses": [k for k in rows[0] if k.startswith("train_") and k != "train_seconds"],
                  "validation": [k for k in rows[0] if k.startswith("val_") and "att" not in k and "loss" not in k],
                  "attention vs mask": [k for k in rows[0] if k.startswith("val_att") and k.endswith(("_mse", "_inside",
                                                                                                     "_area"))]}
        for title, keys in groups.items():
            if not keys:
                continue
            fig, ax = _fig(4.6, 3.4)
            for k in keys:
                ax.plot(epochs, [r.get(k) for r in rows], marker=".", label=k)
            ax.set(xlabel="epoch", title=f"{stage}: {title}")
            ax.legend(fontsize=6)
            out.append((f"{stage}: {title}", _png(fig)))
    return out
