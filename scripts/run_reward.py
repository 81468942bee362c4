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

from trl import ModelConfig

from chatforge.configs import run_training_script
from chatforge.reward import ChatRewardConfig, RewardScriptArguments, train

if __name__ == "__main__":
    run_training_script(
        train, [RewardScriptArguments, ChatRewardConfig, ModelConfig], quiet_transformers=True
    )  # "newly initialized: score.weight" is the point here
