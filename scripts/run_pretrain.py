"""Pretrain a transformer from scratch with the HF Trainer.

Usage:
    python scripts/run_pretrain.py recipes/pretrain.yaml
    python scripts/run_pretrain.py recipes/pretrain.yaml --max_steps 100 --output_dir outputs/try
    python scripts/run_pretrain.py recipes/pretrain.yaml --resume_from_checkpoint last
    accelerate launch --config_file accelerate_configs/ddp.yaml scripts/run_pretrain.py recipes/pretrain.yaml

The recipe names the corpus (`dataset_name`), the tokenizer, the architecture block (Qwen3 or Llama
sizes) and any `TrainingArguments` field. The output folder loads with `AutoModelForCausalLM`.
"""

import json
import logging

import transformers

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.modeling import ArchitectureArguments
from chatforge.pretrain import PretrainConfig, PretrainScriptArguments, train


def cli() -> None:
    script_args, training_args, arch = parse_recipe([PretrainScriptArguments, PretrainConfig, ArchitectureArguments])
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    _, metrics = train(script_args, training_args, arch)
    if training_args.process_index == 0:
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
        print(f"saved to {training_args.output_dir}")


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
