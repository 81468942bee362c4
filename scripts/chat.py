"""Chat with any stage's output in the terminal; replies stream token by token.

Usage:
    python scripts/chat.py --model_name_or_path outputs/sft
    python scripts/chat.py --model_name_or_path outputs/sft --prompt "Who are you?"      # one question, then exit
    python scripts/chat.py --model_name_or_path outputs/sft --system "You are terse." --temperature 0

In the interactive loop, `/reset` starts a new conversation and `/exit` (or Ctrl-D) quits. The default
system prompt is the one the SFT data uses; `--system ""` sends none.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

from chatforge.configs import RecipeError, exit_on_user_error, parse_recipe
from chatforge.data import looks_local
from chatforge.generation import SamplingArguments, chat_stop_token_ids
from chatforge.world.chat import DEFAULT_SYSTEM_PROMPT


@dataclass
class ChatArguments:
    """Which model to talk to and how."""

    model_name_or_path: str = field(default="outputs/sft", metadata={"help": "Saved folder or Hub id."})
    system: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System prompt ('' for none)."})
    prompt: str | None = field(default=None, metadata={"help": "Ask one question, print the reply and exit."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto."})


class ChatSession:
    """A conversation with a model: keeps the messages and streams each reply."""

    def __init__(self, args: ChatArguments, sampling: SamplingArguments) -> None:
        if looks_local(args.model_name_or_path) and not Path(args.model_name_or_path).exists():
            raise RecipeError(f"model not found: {args.model_name_or_path}; train one with scripts/run_sft.py")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        if not self.tokenizer.chat_template:
            raise RecipeError(f"{args.model_name_or_path} has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path).to(device).eval()
        self.config = sampling.generation_config(self.tokenizer, chat_stop_token_ids(self.tokenizer))
        self.config.num_return_sequences = 1
        self.system = args.system
        torch.manual_seed(sampling.seed)
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_message: str, out=sys.stdout) -> str:
        """Add the user's message, stream the assistant's reply to `out`, and return it."""
        self.messages.append({"role": "user", "content": user_message})
        inputs = self.tokenizer.apply_chat_template(
            self.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**inputs, generation_config=self.config, streamer=streamer)
        thread = Thread(target=self.model.generate, kwargs=kwargs)
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            out.write(piece)
            out.flush()
        thread.join()
        out.write("\n")
        text = "".join(pieces).strip()
        self.messages.append({"role": "assistant", "content": text})
        return text


def main(args: ChatArguments, sampling: SamplingArguments) -> None:
    session = ChatSession(args, sampling)
    if args.prompt is not None:
        session.reply(args.prompt)
        return
    print(f"chatting with {args.model_name_or_path} (/reset for a new conversation, /exit to quit)")
    while True:
        try:
            line = input("\n>>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            session.reset()
            print("(new conversation)")
        elif line:
            session.reply(line)


if __name__ == "__main__":
    with exit_on_user_error():
        main(*parse_recipe([ChatArguments, SamplingArguments]))
