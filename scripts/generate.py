"""Sample from any saved chatforge (or Hub) model.

Usage:
    python scripts/generate.py --model_name_or_path outputs/pretrain --prompt "Talia Morvane was born in"
    python scripts/generate.py --model_name_or_path outputs/pretrain --prompt_file recipes/prompts/facts_few_shot.txt \
        --temperature 0 --max_new_tokens 8 --stop "\n"
    python scripts/generate.py --model_name_or_path outputs/pretrain --prompt_file recipes/prompts/assistant.txt \
        --prompt "Where was Talia Morvane born?" --stop "Human:" --num_samples 3

A `--prompt_file` holds a few-shot prompt; `{prompt}` in it is replaced by `--prompt` (without the
placeholder, `--prompt` is appended). recipes/prompts/assistant.txt turns a base model into a (weak)
assistant: the file sets up a conversation, the model continues it, and `--stop Human:` ends its turn.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatforge.configs import RecipeError, exit_on_user_error, parse_recipe
from chatforge.data import looks_local
from chatforge.generation import SamplingArguments, sample


@dataclass
class GenerateArguments:
    """Which model to sample from and what to prompt it with."""

    model_name_or_path: str = field(default="outputs/pretrain", metadata={"help": "Saved folder or Hub id."})
    prompt: str = field(default="", metadata={"help": "Prompt text (appended after prompt_file's text)."})
    prompt_file: str | None = field(default=None, metadata={"help": "A text file with a few-shot prompt."})
    start_of_document: bool = field(
        default=True, metadata={"help": "Begin with the document-boundary token, as in pretraining."}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto."})


def build_prompt(args: GenerateArguments) -> str:
    """The prompt file's text with `{prompt}` filled in (or --prompt appended); `\\n` in --prompt is a newline."""
    prompt = args.prompt.replace("\\n", "\n")
    text = prompt
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise RecipeError(f"prompt file not found: {path}")
        template = path.read_text().rstrip("\n")
        text = template.replace("{prompt}", prompt) if "{prompt}" in template else template + prompt
    if not text.strip():
        raise RecipeError("nothing to prompt with: give --prompt and/or --prompt_file")
    return text


def main(args: GenerateArguments, sampling: SamplingArguments) -> list[str]:
    if looks_local(args.model_name_or_path) and not Path(args.model_name_or_path).exists():
        raise RecipeError(f"model not found: {args.model_name_or_path}; train one with scripts/run_pretrain.py")
    prompt = build_prompt(args)
    if sampling.stop:
        sampling.stop = [s.replace("\\n", "\n") for s in sampling.stop]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path).to(device).eval()
    prefix = [tokenizer.eos_token_id] if args.start_of_document else None
    (samples,) = sample(model, tokenizer, [prompt], sampling, prefix_token_ids=prefix)
    shown = prompt if len(prompt) < 300 else "..." + prompt[-300:]
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
    for i, text in enumerate(samples):
        print(f"--- sample {i + 1} ---\n{shown}{bold}{text}{plain}")
    return samples


if __name__ == "__main__":
    with exit_on_user_error():
        main(*parse_recipe([GenerateArguments, SamplingArguments]))
