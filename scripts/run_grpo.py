"""Reinforcement learning on verifiable math problems with TRL's GRPOTrainer (rollouts with vLLM or HF).

Usage:
    python scripts/run_grpo.py recipes/grpo.yaml
    accelerate launch scripts/run_grpo.py recipes/grpo.yaml
    python scripts/run_grpo.py recipes/grpo.yaml --use_vllm false            # HF generate for the rollouts
    python scripts/run_grpo.py recipes/grpo.yaml --dataset_name openai/gsm8k --dataset_format gsm8k
    python scripts/run_grpo.py recipes/grpo.yaml --resume_from_checkpoint last

The recipe names the starting chat model (the SFT output), the problems (`dataset_name`, world or GSM8K
format), the rewards (`rewards`, from chatforge.rewards, weighted by `reward_weights`) and any `GRPOConfig`
field. Before and after training it scores held-out problems (pass@1, pass@k, greedy accuracy, completion
length) and writes them to OUTPUT_DIR/metrics.json, with the reward and length curves in grpo_curves.png.
"""

import json
import logging

import transformers
from trl import ModelConfig

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.grpo import ChatGRPOConfig, GRPOScriptArguments, train


def cli() -> None:
    script_args, training_args, model_args = parse_recipe([GRPOScriptArguments, ChatGRPOConfig, ModelConfig])
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    _, metrics = train(script_args, training_args, model_args)
    if training_args.process_index == 0:
        print(json.dumps(metrics, indent=2))
        print(f"saved to {training_args.output_dir}")


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
