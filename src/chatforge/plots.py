"""PNG plots a person would rather look at than read: loss curves from a Trainer's log history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(log_history: list[dict], path: str | Path, title: str = "loss") -> Path | None:
    """Plot training loss (and eval loss / bits per byte when logged) against the step; None if nothing logged."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    bpb = [(h["step"], h["eval_bits_per_byte"]) for h in log_history if "eval_bits_per_byte" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if bpb:
        twin = ax.twinx()
        twin.plot(*zip(*bpb), "s--", color="tab:green", label="eval bits/byte")
        twin.set_ylabel("bits per byte")
        twin.legend(loc="upper center")
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
