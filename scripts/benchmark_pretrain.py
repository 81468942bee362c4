"""Pretraining speed: tokens/s and MFU of our Trainer path beside a plain PyTorch loop, on the same model and data.

Usage:
    python scripts/benchmark_pretrain.py                                   # 125m and 350m on a GPU, default runs
    python scripts/benchmark_pretrain.py --sizes 350m --runs trainer+compile,plain+compile --output docs/benchmarks.md
    python scripts/benchmark_pretrain.py --sizes tiny --seq_len 256 --batch_size 8 --steps 8 --warmup_steps 3  # CPU
    python scripts/benchmark_pretrain.py --sizes 125m --runs trainer,plain --profile trainer,plain --time_budget 300

A run is `trainer` (chatforge.pretrain's PretrainTrainer and PretrainConfig) or `plain` (a hand-written loop),
plus options joined by `+`: compile, liger, docs (document masking), flex or fa2 (attention kernel). Data are
random token ids cut into documents by eos tokens, so no tokenizer or download is needed. MFU is model FLOPs
(matmuls and attention, forward and backward) per second over the bf16 matmul peak measured at the start of
the same run (fp32 on a CPU). The table is printed and, with `--output`, written between `<!-- pretrain -->`
markers of that markdown file after every run. A run that fails is noted in its row and the others go on;
`--time_budget` starts no run after that many seconds; `--profile` adds torch.profiler summaries of chosen runs.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from chatforge.configs import RecipeError, exit_on_user_error, root_cause
from chatforge.flops import training_flops_per_token
from chatforge.modeling import count_parameters
from chatforge.report import device_name, environment, write_marked_section
from chatforge.throughput import (
    OPTIONS,
    PRESETS,
    BenchmarkSettings,
    RunSpec,
    loader_tokens_per_second,
    matmul_peak_tflops,
    model_config,
    run_benchmark,
)
from chatforge.token_shards import TokenBlocks, is_token_shards, read_shards_info

MARK_START, MARK_END = "<!-- pretrain -->", "<!-- /pretrain -->"
GPU_RUNS = "trainer,plain,trainer+compile,plain+compile,trainer+compile+liger,trainer+compile+docs+flex"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=None, help=f"Model sizes: {', '.join(PRESETS)}.")
    parser.add_argument(
        "--runs",
        default=None,
        help=f"Comma-separated runs (default on a GPU: {GPU_RUNS}; on a CPU: trainer,plain). "
        + "; ".join(f"{k}: {v}" for k, v in OPTIONS.items()),
    )
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25, help="Optimizer steps per run, warm-up included.")
    parser.add_argument("--warmup_steps", type=int, default=5, help="Untimed first steps (compilation).")
    parser.add_argument("--dataloader_num_workers", type=int, default=2)
    parser.add_argument(
        "--token_shards",
        default=None,
        help="Also time the data loader alone on these token shards (scripts/tokenize_corpus.py output).",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="Comma-separated runs to profile after the timed ones (torch.profiler over --profile_steps steps after "
        "the warm-up): the GPU's busy share of the wall time and the ops that take the most time.",
    )
    parser.add_argument("--profile_steps", type=int, default=3)
    parser.add_argument(
        "--time_budget",
        type=float,
        default=None,
        help="Seconds: start no run after this much time (for a short GPU lease); skipped runs are listed as such.",
    )
    parser.add_argument(
        "--output", default=None, help="Markdown file to write the table into (rewritten after every run)."
    )
    return parser.parse_args()


@dataclass
class Row:
    """One run of one model size: its timings, or why it has none."""

    size: str
    params: int
    gflop: float
    spec: RunSpec
    result: dict | None = None
    note: str = ""  # why there is no result: the run failed, or the time budget was spent
    profile: bool = False  # a profile of the run rather than its timing

    @property
    def plain_key(self) -> str:
        """The plain-loop run this one compares with: the same options."""
        return "+".join(sorted(self.spec.options))


def run_all(
    sizes: list[str],
    specs: list[RunSpec],
    settings: BenchmarkSettings,
    peak: float,
    write,
    time_budget: float | None = None,
    profiles: list[RunSpec] | None = None,
    profile_steps: int = 3,
) -> list[Row]:
    """Every run of every size, run by run in the order given (so under a time budget the first runs cover every
    size), then the profiles. A run that fails (out of memory, a kernel that does not compile) is noted in its
    row; the others go on."""
    rows, profile_rows, profiles = [], [], profiles or []
    for size in sizes:
        config = model_config(size, settings.seq_len)
        with torch.device("meta"):
            params = count_parameters(transformers.AutoModelForCausalLM.from_config(config))
        gflop = training_flops_per_token(config, settings.seq_len) / 1e9
        rows += [Row(size, params, gflop, spec) for spec in specs]
        profile_rows += [Row(size, params, gflop, spec, profile=True) for spec in profiles]
    rows.sort(key=lambda r: specs.index(r.spec))
    profile_rows.sort(key=lambda r: profiles.index(r.spec))
    start = time.perf_counter()
    for row in rows + profile_rows:
        if time_budget is not None and time.perf_counter() - start > time_budget:
            row.note = f"skipped: --time_budget {time_budget:g} s spent"
        else:
            try:
                row.result = run_benchmark(row.spec, row.size, settings, profile_steps if row.profile else 0)
                row.result["mfu"] = row.result["tflops"] / peak
            except torch.cuda.OutOfMemoryError:
                row.note = f"out of GPU memory at batch {settings.batch_size}"
            except Exception as err:  # noqa: BLE001 - one broken run must not cost the others' timings
                logging.exception("%s %s failed", row.size, row.spec.name)
                row.note = f"failed: {type(err).__name__}: {root_cause(err)[:160]}"
        print(f"{row.size} {row.spec.name}{' (profile)' if row.profile else ''}: {summary(row)}", flush=True)
        write(rows + profile_rows)  # after every row, so an interrupted benchmark keeps what it measured
    return rows + profile_rows


def summary(row: Row) -> str:
    r = row.result
    if r is None:
        return row.note
    if row.profile:
        busy = r["profile"]["device_busy"]
        return f"{r['profile']['step_ms']:.1f} ms per profiled step" + (f", GPU busy {busy:.1%}" if busy else "")
    return f"{r['tokens_per_second']:,.0f} tokens/s, MFU {r['mfu']:.1%}, loss {r['mean_loss']:.4f}"


def profile_lines(row: Row, profile_steps: int) -> list[str]:
    """A profiled run as a heading line and a table of the ops with the most time per step."""
    title = f"Profile of {row.size} {row.spec.name}"
    if row.result is None:
        return ["", f"{title}: {row.note}"]
    p = row.result["profile"]
    busy = f"; the GPU was busy {p['device_busy']:.1%} of the wall time" if p["device_busy"] is not None else ""
    where = "GPU" if p["device_busy"] is not None else "host"
    lines = [
        "",
        f"{title} ({profile_steps} steps after the warm-up, under the profiler: {p['step_ms']:.1f} ms per step{busy}):",
        "",
        f"| op | {where} ms per step | share of the step |",
        "|---|---|---|",
    ]
    for name, ms in p["ops"]:
        name = name if len(name) <= 70 else name[:67] + "..."
        lines.append(f"| `{name.replace('|', '/')}` | {ms:.2f} | {ms / p['step_ms']:.1%} |")
    return lines


def table(rows: list[Row], settings: BenchmarkSettings, peak: float, loader_note: str, profile_steps: int = 3) -> str:
    """The markdown table: one line per run, grouped by model size; the Trainer against the plain loop."""
    timed = [r for r in rows if r.result and not r.profile]
    plain = {(r.size, r.plain_key): r.result["tokens_per_second"] for r in timed if r.spec.loop == "plain"}
    dtype = "bfloat16" if settings.bf16 else "float32"
    env = environment()
    lines = [
        f"Device: {device_name()}; measured {dtype} matmul peak {peak:.1f} TFLOP/s; "
        f"{'bf16 autocast' if settings.bf16 else 'fp32'}; sequence {settings.seq_len}, batch {settings.batch_size}, "
        f"{settings.steps - settings.warmup_steps} timed steps after {settings.warmup_steps} warm-up; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, commit {env.get('git commit', '?')}, "
        f"{datetime.date.today()}.{loader_note}",
        "",
        "| model | parameters | GFLOP/token | run | tokens/s | step (ms) | TFLOP/s | MFU | vs plain loop "
        "| peak memory (GiB) | mean loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.profile:
            continue
        head = f"| {row.size} | {row.params / 1e6:.1f}M | {row.gflop:.3f} | {row.spec.name} "
        r = row.result
        if r is None:
            lines.append(head + f"| {row.note} | | | | | | |")
            continue
        base = plain.get((row.size, row.plain_key)) if row.spec.loop == "trainer" else None
        ratio = f"{r['tokens_per_second'] / base:.3f}" if base else "-"
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        lines.append(
            head + f"| {r['tokens_per_second']:,.0f} | {1000 * r['step_seconds']:.1f} | {r['tflops']:.2f} "
            f"| {r['mfu']:.1%} | {ratio} | {memory} | {r['mean_loss']:.4f} |"
        )
    for row in rows:
        if row.profile:
            lines += profile_lines(row, profile_steps)
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    gpu = torch.cuda.is_available()
    sizes = args.sizes or (["125m", "350m"] if gpu else ["tiny"])
    specs = [RunSpec.parse(name) for name in (args.runs or (GPU_RUNS if gpu else "trainer,plain")).split(",")]
    profiles = [RunSpec.parse(name) for name in args.profile.split(",")] if args.profile else []
    if args.profile_steps < 1:
        raise RecipeError(f"--profile_steps must be at least 1, got {args.profile_steps}")
    settings = BenchmarkSettings(
        seq_len=args.seq_len, batch_size=args.batch_size, steps=args.steps, warmup_steps=args.warmup_steps,
        dataloader_num_workers=args.dataloader_num_workers,
    )  # fmt: skip
    settings.validate()
    if len({spec.name for spec in specs}) < len(specs):
        raise RecipeError(f"--runs {args.runs}: a run is named twice")
    if args.time_budget is not None and args.time_budget <= 0:
        raise RecipeError(f"--time_budget must be positive seconds, got {args.time_budget}")
    for size in sizes:
        model_config(size, settings.seq_len)  # unknown sizes fail here, before the first timed run
    for spec in specs + profiles:
        spec.check_installed()
    loader_note = ""
    if args.token_shards:
        if not is_token_shards(args.token_shards):
            raise RecipeError(f"--token_shards {args.token_shards}: no token_shards.json (scripts/tokenize_corpus.py)")
        info = read_shards_info(args.token_shards)
        blocks = TokenBlocks(Path(args.token_shards) / "train", settings.seq_len, info["token_size"])
        rate = loader_tokens_per_second(blocks, settings)
        loader_note = (
            f" Data loader alone on {args.token_shards} (train split, shuffled, {settings.dataloader_num_workers} "
            f"workers): {rate:,.0f} tokens/s."
        )
        print(loader_note.strip())

    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    peak = matmul_peak_tflops(dtype)
    print(f"measured {str(dtype).removeprefix('torch.')} matmul peak: {peak:.1f} TFLOP/s on {device_name()}")

    def write(rows: list[Row]) -> None:
        if args.output:
            text = table(rows, settings, peak, loader_note, args.profile_steps)
            write_marked_section(Path(args.output), MARK_START, MARK_END, "Pretraining: tokens/s and MFU", text)

    rows = run_all(sizes, specs, settings, peak, write, args.time_budget, profiles, args.profile_steps)
    print(table(rows, settings, peak, loader_note, args.profile_steps))
    if args.output:
        print(f"written to {args.output}")
    if not any(row.result for row in rows):
        raise RecipeError("no run finished; see the errors above")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    transformers.logging.set_verbosity_error()
    with exit_on_user_error():
        try:
            main()
        except torch.cuda.OutOfMemoryError as err:
            raise RecipeError(f"out of GPU memory ({err}); lower --batch_size or pick a smaller --sizes") from None
