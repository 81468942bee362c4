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

import json
import logging

import transformers
from trl import ModelConfig

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.sft import ChatSFTConfig, SFTScriptArguments, train


def cli() -> None:
    script_args, training_args, model_args = parse_recipe([SFTScriptArguments, ChatSFTConfig, ModelConfig])
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    _, metrics = train(script_args, training_args, model_args)
    if training_args.process_index == 0:
        print(json.dumps(metrics, indent=2))
        print(f"saved to {training_args.output_dir}")


if __name__ == "__main__":
    with exit_on_user_error():
        cli()
