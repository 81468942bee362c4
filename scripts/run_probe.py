"""Knowledge probing for factuality (Llama 3's recipe): sample the chat model's replies to questions with known
answers, judge them, and write "I don't know" training conversations for what it consistently gets wrong.

Usage:
    python scripts/run_probe.py recipes/probe.yaml
    python scripts/run_probe.py recipes/probe.yaml --model_name_or_path outputs/sft --output_dir outputs/probe-try
    python scripts/run_probe.py recipes/probe.yaml --max_questions 40 --num_samples 2     # a quick look
    python scripts/run_probe.py recipes/probe.yaml --use_vllm true                       # sample with vLLM

The recipe names the chat model, the questions (`probe_file`, data/world/probe.jsonl from run_data.py: facts of
people seen only in pretraining, and invented people) and the sampling and decision settings (fields of
chatforge.factuality.ProbeConfig). Writes OUTPUT_DIR/train.jsonl (`messages` conversations for
recipes/factuality.yaml), OUTPUT_DIR/probe.jsonl (each question's samples, right count and decision) and
OUTPUT_DIR/metrics.json (sampled accuracy, hallucination rate on the invented people, decisions per relation).
"""

from __future__ import annotations

import json
import logging

import transformers

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.factuality import ProbeConfig, probe


def main(config: ProbeConfig) -> dict:
    """Probe, then print the headline numbers and where the files went."""
    metrics = probe(config)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=2))
    print(f"decisions: {json.dumps(metrics['decisions'])}")
    print(f"wrote {config.output_dir}/train.jsonl, probe.jsonl, metrics.json")
    return metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    with exit_on_user_error():
        (probe_config,) = parse_recipe([ProbeConfig])
        main(probe_config)
