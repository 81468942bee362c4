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

from trl import ModelConfig

from chatforge.configs import run_training_script
from chatforge.dpo import ChatDPOConfig, DPOScriptArguments, train

if __name__ == "__main__":
    run_training_script(train, [DPOScriptArguments, ChatDPOConfig, ModelConfig])
