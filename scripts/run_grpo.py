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

from trl import ModelConfig

from chatforge.configs import run_training_script
from chatforge.grpo import ChatGRPOConfig, GRPOScriptArguments, train

if __name__ == "__main__":
    run_training_script(train, [GRPOScriptArguments, ChatGRPOConfig, ModelConfig])
