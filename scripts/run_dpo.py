"""Direct preference optimisation: learn from preference pairs without a reward model (TRL's DPOTrainer).

Usage:
    python scripts/run_dpo.py recipes/dpo.yaml
    accelerate launch scripts/run_dpo.py recipes/dpo.yaml --beta 0.05 --output_dir outputs/dpo-try
    python scripts/run_dpo.py recipes/dpo.yaml --use_peft true --lora_r 16

The recipe names the chat model (`model_name_or_path`, e.g. outputs/sft), the pairs
(`{format: world|jsonl|hh_rlhf|oasst|ultrafeedback, path|name, split}`) and any `DPOConfig` field. The frozen
starting model is the reference. metrics.json holds the implicit-reward accuracy on held-out pairs and the
world's judge scoring the policy's own greedy replies, before and after.
"""

import json
import logging

import transformers
from trl import ModelConfig

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.dpo import ChatDPOConfig, DPOScriptArguments, train


def cli() -> None:
    script_args, training_args, model_args = parse_recipe([DPOScriptArguments, ChatDPOConfig, ModelConfig])
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    _, metrics = train(script_args, training_args, model_args)
    if training_args.process_index == 0:
        print(json.dumps(metrics, indent=2))
        print(f"saved to {training_args.output_dir}")


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
