"""Evaluate any stage's output (or a Hub model) on the tasks a recipe names.

Usage:
    python scripts/evaluate.py recipes/eval.yaml --model_name_or_path outputs/sft
    python scripts/evaluate.py recipes/eval.yaml --model_name_or_path outputs/pretrain --only world_bpb,world_facts
    python scripts/evaluate.py recipes/eval.yaml --model_name_or_path outputs/sft --limit 20     # a quick look
    python scripts/evaluate.py recipes/eval.yaml --tasks '{"mc": {"type": "multiple_choice", "format": "mmlu",
        "source": "cais/mmlu", "split": "test", "limit": 500}}'

Task types: bits_per_byte, multiple_choice (hellaswag, mmlu, arc, world_facts formats), fact_completion,
chat_qa, hallucination, math, tools (see chatforge.evaluation.tasks). Results go to <output_dir>/eval_results.json
(a run of some tasks replaces theirs and keeps the other tasks' results of the same model) and a one-line summary
per task of this run is printed.
"""

from __future__ import annotations

import logging

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.evaluation.runner import EvalScriptArguments, evaluate_model


def main(args: EvalScriptArguments) -> dict:
    results = evaluate_model(args)
    for name, metrics in results["tasks"].items():
        numbers = [
            f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        print(f"{name} ({results['seconds'][name]:.0f} s): " + ", ".join(numbers))
    print(f"results: {args.results_dir() / 'eval_results.json'}")
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error():
        (script_args,) = parse_recipe([EvalScriptArguments])
        main(script_args)
