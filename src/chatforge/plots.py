"""PNG plots a person would rather look at than read: loss curves from a Trainer's log history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator  # noqa: E402


def plot_loss_curves(log_history: list[dict], path: str | Path, title: str = "loss") -> Path | None:
    """Plot training and eval loss against the step (eval bits per byte in the legend); None if nothing logged."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    bpb = [h["eval_bits_per_byte"] for h in log_history if "eval_bits_per_byte" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        label = "eval loss" + (f" (last: {bpb[-1]:.3f} bits/byte)" if bpb else "")
        ax.plot(*zip(*evals), "o-", label=label)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    if high / low > 10:  # over a decade, a label at every minor tick (0.6, 0.7, 0.8, 0.9) piles up below each 1
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(log_history: list[dict], series: dict[str, str], path: str | Path, title: str = "") -> Path | None:
    """One panel per logged key in `series` (key -> axis label) against the step; None if none was logged."""
    panels = [(key, label, [(h["step"], h[key]) for h in log_history if key in h]) for key, label in series.items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, label, points) in zip(axes[0], panels):
        ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 1.5 on a short run
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {key}" if title else key, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_funnel(steps: list[str], documents: list[int], tokens: list[int], path: str | Path) -> Path | None:
    """Horizontal bars of documents (and estimated tokens) left after each pipeline step; None if no steps."""
    if not steps:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * len(steps) + 1.2), sharey=True)
    positions = list(range(len(steps)))[::-1]
    for ax, values, label in ((axes[0], documents, "documents out"), (axes[1], tokens, "tokens out (est.)")):
        ax.barh(positions, values, color="#4c72b0")
        top = max(values) or 1
        for y, value in zip(positions, values):
            ax.text(value + top * 0.01, y, f"{value:,}", va="center", fontsize=8)
        ax.set_xlim(0, top * 1.18)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(positions, steps)
    fig.suptitle("web data funnel")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
