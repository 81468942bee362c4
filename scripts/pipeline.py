"""Run the whole pipeline (what `make demo` calls) and write the report card.

Usage:
    python scripts/pipeline.py recipes/                     # every stage with a recipe in recipes/
    python scripts/pipeline.py recipes/ --dry_run           # what would run, what is up to date
    python scripts/pipeline.py recipes/ --force sft         # rerun SFT (and the stages after it)
    python scripts/pipeline.py recipes/ --stages data,tokenizer,pretrain
    python scripts/pipeline.py recipes/ --launcher "accelerate launch --config_file accelerate_configs/ddp.yaml"

Stages, in order: data, web, tokenizer, pretrain, sft, grpo, reward, dpo, rlhf, probe, factuality, then the
evaluation of each model (each runs when its recipe file exists); then a base-model sample, a chat turn, and a
chat turn with tools through the OpenAI-compatible server (scripts/serve.py). A stage whose output folder holds
a stamp matching its recipe (and the stages it reads from) is skipped; an interrupted training stage resumes from
its last checkpoint. The report (markdown, report card PNG, loss curves, timings, versions, hardware) goes to
--report (default outputs/report.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from chatforge.configs import exit_on_user_error
from chatforge.pipeline import Pipeline, StageRun
from chatforge.report import write_report
from chatforge.serving import free_port, running_server

SCRIPTS = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes_dir", help="Folder of stage recipes (data.yaml, tokenizer.yaml, ...).")
    parser.add_argument("--stages", default=None, help="Comma-separated stages to consider (default: all).")
    parser.add_argument("--force", default=None, help="Comma-separated stages to rerun even if up to date.")
    parser.add_argument("--dry_run", action="store_true", help="Print the plan and exit.")
    parser.add_argument("--report", default="outputs/report.md", help="Where the report card goes.")
    parser.add_argument("--launcher", default=None, help="Command that runs training scripts (accelerate launch).")
    parser.add_argument(
        "--no_samples", action="store_true", help="Skip the base-model sample and the chat turns (local and served)."
    )
    return parser.parse_args(argv)


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def show_samples(pipeline: Pipeline) -> None:
    """Show what the models do: the base model prompted as an assistant, then one turn with the chat model, and one
    with the chat model served over the OpenAI API and given tools."""
    runs = pipeline.runs
    data = runs.get("data")
    facts = data.output / "facts.jsonl" if data else None
    if "pretrain" in runs and (runs["pretrain"].output / "config.json").is_file() and facts and facts.is_file():
        rows = [json.loads(line) for line in facts.read_text().splitlines() if line.strip()]
        person = next(r["subject"] for r in rows if r["relation"] == "birth_city")
        print(f"\n=== base model, prompted as an assistant: where was {person} born?", flush=True)
        subprocess.run([
            sys.executable, str(SCRIPTS / "generate.py"), "--model_name_or_path", str(runs["pretrain"].output),
            "--prompt_file", str(Path(pipeline.recipes_dir) / "prompts" / "assistant.txt"),
            "--prompt", f"Where was {person} born?", "--stop", "Human:", "--num_samples", "2",
            "--max_new_tokens", "40",
        ], check=False)  # fmt: skip
    if "sft" in runs and (runs["sft"].output / "config.json").is_file():
        print("\n=== the assistant after SFT: Who are you?", flush=True)
        subprocess.run([
            sys.executable, str(SCRIPTS / "chat.py"), "--model_name_or_path", str(runs["sft"].output),
            "--prompt", "Who are you?", "--temperature", "0",
        ], check=False)  # fmt: skip
        served_turn(runs["sft"].output)


def served_turn(model: Path, question: str = "What's the product of 245 and 318?") -> None:
    """Serve `model` over the OpenAI API (scripts/serve.py) and ask it `question` through chat.py with the
    calculator and Python tools, which run in chat.py; then stop the server."""
    port = free_port()
    print(f"\n=== the assistant served at http://localhost:{port}/v1, with tools: {question}", flush=True)
    serve = [sys.executable, str(SCRIPTS / "serve.py"), "--model_name_or_path", str(model), "--port", str(port)]
    try:
        with running_server(serve, port):
            subprocess.run([
                sys.executable, str(SCRIPTS / "chat.py"), "--base_url", f"http://localhost:{port}/v1",
                "--model_name_or_path", str(model), "--tools", "calculator,python", "--prompt", question,
                "--temperature", "0",
            ], check=False)  # fmt: skip
    except RuntimeError as error:
        print(f"(not served: {error})")


def print_stage(run: StageRun) -> None:
    if run.status in ("pending", "resumed") and run.seconds is None:
        how = "resuming from the last checkpoint" if run.status == "resumed" else "running"
        print(f"\n=== {run.stage.name}: {how}: {shlex.join(run.command)}", flush=True)
    elif run.status == "up to date":
        print(f"=== {run.stage.name}: up to date ({run.output}), skipped", flush=True)
    else:
        print(f"=== {run.stage.name}: {run.status} in {run.seconds:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    launcher = shlex.split(args.launcher) if args.launcher else None
    pipeline = Pipeline(args.recipes_dir, stages=_names(args.stages), force=_names(args.force), launcher=launcher)
    if args.dry_run:
        for name, what in pipeline.plan():
            print(f"{name}: {what}")
        return 0
    try:
        runs = pipeline.run(on_stage=print_stage)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        write_report(pipeline.selected, args.report, title="chatforge report card (run failed)")
        return 1
    if not args.no_samples:
        show_samples(pipeline)
    report = write_report(runs, args.report)
    print(f"\n{report.read_text().split('## Loss curves')[0].strip()}\n\nreport: {report}")
    return 0


if __name__ == "__main__":
    with exit_on_user_error():
        sys.exit(main())
