"""Headless PNG figures: confusion matrices, learning curves, sweep trials."""

from __future__ import annotations

import io
from pathlib import Path

from raybench.artifacts import write_bytes
from raybench.results import EpochRow, TrialRow, metric_key


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers, CI or Ray workers
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return write_bytes(path, buf.getvalue())


def confusion_matrix_png(cm: list[list[int]], path: str | Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    peak = max(max(row) for row in cm) or 1
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center",
                    color="white" if cm[i][j] > peak / 2 else "black")
    ax.set_xticks([0, 1], ["down (0)", "up (1)"])
    ax.set_yticks([0, 1], ["down (0)", "up (1)"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def curves_png(history: list[EpochRow], metric: str, best_epoch: int, path: str | Path) -> Path:
    """Train/validation loss and the early-stopping metric per epoch, best epoch marked."""
    plt = pyplot()
    epochs = [row.epoch for row in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [r.train_loss for r in history], label="train")
    if any(r.val_loss is not None for r in history):
        ax_loss.plot(epochs, [r.val_loss for r in history], label="validation")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_metric.plot(epochs, [r.value(metric) for r in history], color="tab:green")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric_key(metric))
    for ax in (ax_loss, ax_metric):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    ax_metric.set_title(f"best epoch {best_epoch}")
    return save_figure(fig, path)


def trials_png(rows: list[TrialRow], metric: str, path: str | Path) -> Path:
    """The metric per epoch for every trial of a sweep: short dashed lines are trials ASHA
    stopped; each line is labelled with its trial at its last point."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        values = [v for v in row.history if v is not None]
        if not values:
            continue
        epochs = list(range(1, len(values) + 1))
        stopped = row.status == "stopped_early"
        ax.plot(epochs, values, color="tab:red" if stopped else "tab:blue",
                linestyle="--" if stopped else "-", alpha=0.6 if stopped else 0.9, linewidth=1)
        ax.plot(epochs[-1], values[-1], "x" if stopped else "o",
                color="tab:red" if stopped else "tab:blue", markersize=4)
        ax.annotate(str(row.trial_id or "?")[:12], (epochs[-1], values[-1]), fontsize=6,
                    xytext=(3, 0), textcoords="offset points", va="center")
    ax.plot([], [], color="tab:blue", marker="o", label="ran to max_t")
    ax.plot([], [], color="tab:red", linestyle="--", marker="x", label="stopped early (ASHA)")
    ax.set_xlabel("epoch (training_iteration)")
    ax.set_ylabel(metric)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    return save_figure(fig, path)
