"""Supervised fine-tuning: turn a pretrained base model into an assistant with TRL's SFTTrainer.

Usage:
    accelerate launch scripts/run_sft.py recipes/sft.yaml
    python scripts/run_sft.py recipes/sft.yaml --max_steps 50 --output_dir outputs/sft-try
    python scripts/run_sft.py recipes/sft.yaml --use_peft true --lora_r 16 --output_dir outputs/sft-lora
    python scripts/run_sft.py recipes/sft.yaml --resume_from_checkpoint last

The recipe names the base model (`model_name_or_path`, e.g. the pretraining output), the conversations
(`dataset_name` or a weighted `dataset_mixture` of `messages` datasets) and any `SFTConfig` field.
The loss covers only the assistant's tokens (`assistant_only_loss`), which needs the chat template's
`{% generation %}` tags. The output folder loads with `AutoModelForCausalLM` and chats with
`python scripts/chat.py --model_name_or_path outputs/sft`.
"""

from trl import ModelConfig

from chatforge.configs import run_training_script
from chatforge.sft import ChatSFTConfig, SFTScriptArguments, train

if __name__ == "__main__":
    run_training_script(train, [SFTScriptArguments, ChatSFTConfig, ModelConfig])
