"""Reward model: a scalar head on the chat model, trained with TRL's RewardTrainer on preference pairs.

Usage:
    python scripts/run_reward.py recipes/reward.yaml
    accelerate launch scripts/run_reward.py recipes/reward.yaml --max_steps 50 --output_dir outputs/reward-try
    python scripts/run_reward.py recipes/reward.yaml --train_dataset '{"format": "hh_rlhf", "name": "Anthropic/hh-rlhf"}'

The recipe names the chat model (`model_name_or_path`, e.g. outputs/sft), the training pairs and the held-out
pairs (`{format: world|jsonl|hh_rlhf|oasst|ultrafeedback, path|name, split}`) and any `RewardConfig` field.
The output loads with `AutoModelForSequenceClassification`; metrics.json holds pairwise accuracy on the held-out
pairs before (random head) and after training, per kind of rejected reply.
"""

import json
import logging

import transformers
from trl import ModelConfig

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.reward import ChatRewardConfig, RewardScriptArguments, train


def cli() -> None:
    script_args, training_args, model_args = parse_recipe([RewardScriptArguments, ChatRewardConfig, ModelConfig])
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_error()  # "newly initialized: score.weight" is the point here
    _, metrics = train(script_args, training_args, model_args)
    if training_args.process_index == 0:
        print(json.dumps(metrics, indent=2))
        print(f"saved to {training_args.output_dir}")


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
