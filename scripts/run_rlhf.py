"""RLHF: optimise the chat policy against the reward model with GRPO, RLOO or PPO, watched by the world's judge.

Usage:
    python scripts/run_rlhf.py recipes/rlhf.yaml                         # GRPO (TRL) against outputs/reward
    python scripts/run_rlhf.py recipes/rlhf.yaml --algorithm rloo        # RLOO (TRL): the recipe's rloo section
    python scripts/run_rlhf.py recipes/rlhf.yaml --algorithm ppo         # PPO (chatforge.ppo): value model, GAE
    accelerate launch scripts/run_rlhf.py recipes/rlhf.yaml --max_steps 400 --output_dir outputs/rlhf-long

`algorithm` picks the training-arguments class that reads the recipe (TRL's GRPOConfig, RLOOConfig, or
chatforge.ppo.PPOConfig) and, when the recipe has one, that algorithm's section of settings. Every `judge_every`
steps the policy's greedy replies to held-out questions are scored by the reward model and by the world's judge;
OUTPUT_DIR/rlhf_curves.png shows both (reward hacking: the reward model's score rises while the judge's falls) and
metrics.json has the curve and the judge's best step.
"""

import sys

from trl import ModelConfig

from chatforge.configs import exit_on_user_error, run_training_script
from chatforge.rlhf import RLHFScriptArguments, config_class, resolve_rlhf_recipe, train

if __name__ == "__main__":
    with exit_on_user_error():
        algorithm, args = resolve_rlhf_recipe(sys.argv[1:])
        config = config_class(algorithm)
    sys.argv[1:] = args
    run_training_script(train, [RLHFScriptArguments, config, ModelConfig])
