"""Serving speed: requests through scripts/serve.py (the OpenAI API) beside the same replies generated in-process.

Usage:
    python scripts/benchmark_serving.py --model_name_or_path outputs/sft
    python scripts/benchmark_serving.py --model_name_or_path outputs/sft --num_requests 64 --concurrency 1,4 \
        --output docs/benchmarks.md

The requests are the world's chat-eval questions (data/world/chat_eval.jsonl: system prompt and question), answered
greedily with up to `--max_new_tokens` tokens. The in-process row generates the same replies with HF `generate`,
one at a time, in this process: what the server adds on top is HTTP, templating and parsing per request. The server
rows send whole (non-streamed) requests, `--concurrency` at a time, and one streamed pass measures the time to the
first token. Greedy replies are the same both ways, so the generated-token columns agree. The table is printed and,
with `--output`, written into that markdown file between `<!-- serving -->` markers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.configs import RecipeError, exit_on_user_error
from chatforge.generation import chat_stop_token_ids
from chatforge.report import device_name, environment, write_marked_section
from chatforge.serving import check_servable, free_port, running_server

MARK_START, MARK_END = "<!-- serving -->", "<!-- /serving -->"
SCRIPTS = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="outputs/sft")
    parser.add_argument("--questions", default="data/world/chat_eval.jsonl", help="JSONL rows with `messages`.")
    parser.add_argument("--num_requests", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4", help="Comma-separated numbers of requests in flight.")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (both the server and the baseline).")
    parser.add_argument(
        "--continuous_batching", action="store_true", help="Also time the server with continuous batching on."
    )
    parser.add_argument("--output", default=None, help="Markdown file to write the table into.")
    return parser.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1] if len(values) > 1 else values[0]


def in_process(model_name: str, conversations: list[list[dict]], max_new_tokens: int, device: str) -> dict:
    """The replies generated in this process, one request at a time (after one warm-up reply); with the model's
    parameter count."""
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(model_name).to(device).eval()
    stops = chat_stop_token_ids(tokenizer)

    def generate(messages: list[dict]) -> int:
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(device)
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        return output.shape[1] - inputs["input_ids"].shape[1]

    generate(conversations[0])
    latencies, tokens = [], []
    start = time.perf_counter()
    for messages in conversations:
        begin = time.perf_counter()
        tokens.append(generate(messages))
        latencies.append(time.perf_counter() - begin)
    parameters = sum(p.numel() for p in model.parameters())
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "latencies": latencies, "parameters": parameters}


def through_server(base_url: str, model: str, conversations: list[list[dict]], max_new_tokens: int, workers: int):
    """Whole replies, `workers` requests in flight; per-request latency and generated tokens (the server's count)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none")

    def ask(messages: list[dict]) -> tuple[float, int]:
        begin = time.perf_counter()
        reply = client.chat.completions.create(
            model=model, messages=messages, temperature=0.0, max_tokens=max_new_tokens
        )
        return time.perf_counter() - begin, reply.usage.completion_tokens

    ask(conversations[0])  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(ask, conversations))
    return {
        "seconds": time.perf_counter() - start,
        "tokens": [n for _, n in results],
        "latencies": [t for t, _ in results],
    }


def first_token_latencies(base_url: str, model: str, conversations: list[list[dict]], max_new_tokens: int) -> list:
    """Streamed requests one at a time: seconds until the first piece of the reply arrives."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="none")
    waits = []
    for messages in conversations:
        begin = time.perf_counter()
        stream = client.chat.completions.create(
            model=model, messages=messages, temperature=0.0, max_tokens=max_new_tokens, stream=True
        )
        first = None
        for chunk in stream:
            if (
                first is None
                and chunk.choices
                and (chunk.choices[0].delta.content or chunk.choices[0].delta.tool_calls)
            ):
                first = time.perf_counter() - begin
        waits.append(first if first is not None else time.perf_counter() - begin)
    return waits


def serve_and_time(
    args: argparse.Namespace, conversations: list[list[dict]], device: str, concurrency: list[int], batching: bool
) -> list[tuple[int, dict, str]]:
    """Start scripts/serve.py, time the streamed pass and each concurrency, stop it; (workers, result, first)."""
    port = free_port()
    base_url = f"http://localhost:{port}/v1"
    command = [
        sys.executable, str(SCRIPTS / "serve.py"), "--model_name_or_path", args.model_name_or_path,
        "--port", str(port), "--device", device, "--continuous_batching", str(batching).lower(),
    ]  # fmt: skip
    timed = []
    try:
        with running_server(command, port):
            waits = first_token_latencies(base_url, args.model_name_or_path, conversations, args.max_new_tokens)
            for workers in concurrency:
                result = through_server(base_url, args.model_name_or_path, conversations, args.max_new_tokens, workers)
                timed.append((workers, result, f"{percentile(waits, 50):.3f}" if workers == 1 else "-"))
    except RuntimeError as error:
        raise RecipeError(str(error)) from None
    return timed


def row(name: str, workers: str, result: dict, first_token: str = "-") -> str:
    total = sum(result["tokens"])
    return (
        f"| {name} | {workers} | {len(result['tokens'])} | {total:,} | {result['seconds']:.2f} | "
        f"{total / result['seconds']:,.0f} | {len(result['tokens']) / result['seconds']:.2f} | "
        f"{percentile(result['latencies'], 50):.3f} | {percentile(result['latencies'], 95):.3f} | {first_token} |"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not concurrency or min(concurrency) < 1:
        raise RecipeError(f"--concurrency takes positive numbers, got {args.concurrency!r}")
    if not Path(args.questions).is_file():
        raise RecipeError(f"{args.questions} not found; `python scripts/run_data.py recipes/data.yaml` writes it")
    check_servable(args.model_name_or_path)
    rows = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    conversations = [r["messages"] for r in rows[: args.num_requests]]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    results = [
        (
            "in-process HF generate",
            "1",
            in_process(args.model_name_or_path, conversations, args.max_new_tokens, device),
            "-",
        )
    ]
    for batching in [False, True] if args.continuous_batching else [False]:
        name = "scripts/serve.py" + (" --continuous_batching" if batching else "")
        for workers, result, first in serve_and_time(args, conversations, device, concurrency, batching):
            results.append((name, str(workers), result, first))

    params = results[0][2].pop("parameters")  # counted on the in-process model
    lines = [
        f"Device: {device_name()}; model {args.model_name_or_path} ({params / 1e6:.1f}M parameters); "
        f"{len(conversations)} chat-eval requests, greedy, up to {args.max_new_tokens} new tokens; "
        f"torch {torch.__version__}, transformers {environment()['transformers']}.",
        "",
        "| backend | concurrency | requests | generated tokens | seconds | tokens/s | requests/s | latency p50 (s) "
        "| latency p95 (s) | first token p50 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(row(name, workers, result, first) for name, workers, result, first in results),
    ]
    table = "\n".join(lines)
    print(table)
    if args.output:
        write_marked_section(
            Path(args.output), MARK_START, MARK_END, "Serving: the OpenAI API against in-process generation", table
        )
        print(f"written to {args.output}")
    return [{"backend": name, "concurrency": int(workers), **result} for name, workers, result, _ in results]


if __name__ == "__main__":
    with exit_on_user_error():
        main()
