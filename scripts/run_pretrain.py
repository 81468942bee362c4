"""Pretrain a transformer from scratch with the HF Trainer.

Usage:
    python scripts/run_pretrain.py recipes/pretrain.yaml
    python scripts/run_pretrain.py recipes/pretrain.yaml --max_steps 100 --output_dir outputs/try
    python scripts/run_pretrain.py recipes/pretrain.yaml --resume_from_checkpoint last
    accelerate launch --config_file accelerate_configs/ddp.yaml scripts/run_pretrain.py recipes/pretrain.yaml

The recipe names the corpus (`dataset_name`), the tokenizer, the architecture block (Qwen3 or Llama
sizes) and any `TrainingArguments` field. The output folder loads with `AutoModelForCausalLM`.
"""

from chatforge.configs import run_training_script
from chatforge.modeling import ArchitectureArguments
from chatforge.pretrain import PretrainConfig, PretrainScriptArguments, train

if __name__ == "__main__":
    run_training_script(train, [PretrainScriptArguments, PretrainConfig, ArchitectureArguments])
