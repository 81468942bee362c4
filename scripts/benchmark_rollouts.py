"""Rollout speed: generated tokens per second with HF `generate` and with vLLM, at the same settings.

Usage:
    python scripts/benchmark_rollouts.py --model_name_or_path outputs/sft
    python scripts/benchmark_rollouts.py --model_name_or_path outputs/sft --num_prompts 64 --num_samples 8 \
        --max_new_tokens 128 --output docs/benchmarks.md

Prompts are the world's held-out math problems in chat format (what GRPO rolls out). Each backend generates
`num_samples` completions per prompt at temperature 1.0 (`--repeats` times, best run reported); vLLM's engine
start-up is timed separately. The table is printed and, with `--output`, written into that markdown file
between `<!-- rollouts -->` markers (replacing the previous table for the same device).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.configs import RecipeError, exit_on_user_error
from chatforge.generation import HFGenerator, SamplingArguments, chat_stop_token_ids
from chatforge.report import device_name, environment, write_marked_section
from chatforge.vllm_backend import VLLMGenerator, VLLMSettings, require_vllm

MARK_START, MARK_END = "<!-- rollouts -->", "<!-- /rollouts -->"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="outputs/sft")
    parser.add_argument("--problems", default="data/world/math/test.jsonl")
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64, help="HF generate: sequences per call.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--output", default=None, help="Markdown file to write the table into.")
    return parser.parse_args()


def run(generator, tokenizer, prompts: list[str], settings: SamplingArguments, repeats: int) -> dict:
    """Best-of-`repeats` generation time and the tokens generated (counted with the tokenizer)."""
    best = None
    stop = chat_stop_token_ids(tokenizer)
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = generator(prompts, settings, stop_token_ids=stop)
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for s in outputs for t in s)
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "tokens": tokens}
    best["tokens_per_second"] = best["tokens"] / best["seconds"]
    return best


def write_table(path: Path, table: str) -> None:
    write_marked_section(path, MARK_START, MARK_END, "Rollouts: HF generate vs vLLM", table)


def main() -> None:
    args = parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "vllm" in backends:
        require_vllm("--backends vllm", alternative="--backends hf")
    if not Path(args.problems).is_file():
        raise RecipeError(f"{args.problems} not found; `python scripts/run_data.py recipes/data.yaml` writes it")
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    rows = [json.loads(line) for line in Path(args.problems).read_text().splitlines() if line.strip()]
    questions = [r["question"] for r in rows[: args.num_prompts]]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    settings = SamplingArguments(
        max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, num_samples=args.num_samples
    )
    results = {}
    if "hf" in backends:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path).to(device).eval()
        generator = HFGenerator(model, tokenizer, args.batch_size)
        generator(prompts[:2], settings)  # warm-up: first-call allocations are not generation speed
        results["HF generate"] = run(generator, tokenizer, prompts, settings, args.repeats)
        del model
    if "vllm" in backends:
        start = time.perf_counter()
        generator = VLLMGenerator(args.model_name_or_path, tokenizer, VLLMSettings())
        startup = time.perf_counter() - start
        results["vLLM"] = run(generator, tokenizer, prompts, settings, args.repeats)
        results["vLLM"]["startup_seconds"] = startup
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(args.model_name_or_path).parameters())
    lines = [
        f"Device: {device_name()}; model {args.model_name_or_path} ({params / 1e6:.1f}M parameters); "
        f"{len(prompts)} prompts x {args.num_samples} samples, up to {args.max_new_tokens} new tokens, "
        f"temperature 1.0; torch {torch.__version__}, vLLM {environment()['vllm']}.",
        "",
        "| backend | generated tokens | seconds | tokens/s | engine start-up (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        startup = f"{r['startup_seconds']:.1f}" if "startup_seconds" in r else "-"
        lines.append(f"| {name} | {r['tokens']:,} | {r['seconds']:.2f} | {r['tokens_per_second']:,.0f} | {startup} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        write_table(Path(args.output), table)
        print(f"written to {args.output}")


if __name__ == "__main__":
    with exit_on_user_error():
        main()
