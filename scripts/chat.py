"""Chat with any stage's output in the terminal; replies stream token by token.

Usage:
    python scripts/chat.py --model_name_or_path outputs/sft
    python scripts/chat.py --model_name_or_path outputs/sft --prompt "Who are you?"      # one question, then exit
    python scripts/chat.py --model_name_or_path outputs/sft --system "You are terse." --temperature 0
    python scripts/chat.py --model_name_or_path outputs/sft --tools python,search,calculator  # may call tools
    python scripts/chat.py --base_url http://localhost:8000/v1 --tools calculator   # a served model (serve.py)

In the interactive loop, `/reset` starts a new conversation and `/exit` (or Ctrl-D) quits. The default
system prompt is the one the SFT data uses; `--system ""` sends none.

With `--tools`, the named tools are offered to the model (their schemas in the system turn); a call it writes
is run (Python in the sandbox; search over `--search_index`, by default the world's data/world/search), the
result is printed as `[tool] result` and shown to the model, which goes on until it answers (at most
`--max_tool_rounds` rounds of calls). Calls and results are dimmed on a terminal.

With `--base_url`, the model is not loaded here: the conversation goes to that OpenAI-compatible server
(`scripts/serve.py`, `vllm serve`, ...) as chat completions, `--model_name_or_path` naming the served model (when
the server serves another single model, that one is used). Tools still run here: the server answers with
`tool_calls`, this script runs them and sends back the results (replies stream without tools and come whole with
them). `top_k` is not part of that API and is not sent.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from threading import Thread
from typing import TextIO

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TextIteratorStreamer,
)

from chatforge.configs import RecipeError, exit_on_user_error, parse_recipe
from chatforge.data import looks_local
from chatforge.generation import SamplingArguments, chat_stop_token_ids, encode_prompts
from chatforge.remote_chat import RemoteChat
from chatforge.tokenizer import TOOL_CALL_START
from chatforge.tool_loop import run_tool_loop
from chatforge.tools.registry import select_tools
from chatforge.world.chat import DEFAULT_SYSTEM_PROMPT


@dataclass
class ChatArguments:
    """Which model to talk to and how."""

    model_name_or_path: str = field(default="outputs/sft", metadata={"help": "Saved folder or Hub id."})
    system: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "System prompt ('' for none)."})
    prompt: str | None = field(default=None, metadata={"help": "Ask one question, print the reply and exit."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto."})
    tools: str | None = field(
        default=None, metadata={"help": "Comma-separated tools the model may call: python, search, calculator."}
    )
    search_index: str = field(
        default="data/world/search", metadata={"help": "The search tool's index (written by run_data.py)."}
    )
    max_tool_rounds: int = field(default=3, metadata={"help": "Rounds of tool calls per reply, at most."})
    base_url: str | None = field(
        default=None,
        metadata={"help": "An OpenAI-compatible server to talk to instead of loading the model (…/v1)."},
    )
    api_key: str = field(
        default_factory=lambda: os.environ.get("OPENAI_API_KEY", "none"),
        metadata={"help": "The server's API key (default: $OPENAI_API_KEY; local servers take any)."},
    )


DIM, RESET = "\033[2m", "\033[0m"


def use_color(out: TextIO) -> bool:
    """Dim tool traffic only on a terminal, and never with NO_COLOR set."""
    return hasattr(out, "isatty") and out.isatty() and not os.environ.get("NO_COLOR")


def tool_result_line(message: dict) -> str:
    """A tool message as shown in the chat: `[name] result`, continuation lines indented."""
    return f"[{message['name']}] " + message["content"].replace("\n", "\n    ")


def write_dimmed(out: TextIO, lines: list[str]) -> None:
    """Write tool traffic, dimmed on a terminal."""
    for line in lines:
        out.write(f"{DIM}{line}{RESET}\n" if use_color(out) else f"{line}\n")
    out.flush()


class StreamingGenerator:
    """The generator interface (`chatforge.generation.HFGenerator`) one prompt at a time, writing each piece of
    text to `out` as it is generated; text from a `<tool_call>` on is dimmed on a terminal."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: TextIO) -> None:
        self.model, self.tokenizer, self.out = model, tokenizer, out

    def __call__(
        self,
        prompts: list[str],
        settings: SamplingArguments,
        stop_token_ids: list[int] | None = None,
        prefix_token_ids: list[int] | None = None,
    ) -> list[list[str]]:
        config = settings.generation_config(self.tokenizer, stop_token_ids)
        config.num_return_sequences = 1
        replies = []
        for ids in encode_prompts(self.tokenizer, prompts, prefix_token_ids):
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            input_ids = torch.tensor([ids], device=self.model.device)
            kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer)
            thread = Thread(target=self.model.generate, kwargs={**kwargs, "generation_config": config})
            thread.start()
            pieces, dimmed = [], False
            for piece in streamer:
                if TOOL_CALL_START in piece and use_color(self.out) and not dimmed:
                    self.out.write(DIM)
                    dimmed = True
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
            thread.join()
            self.out.write((RESET if dimmed else "") + "\n")
            replies.append(["".join(pieces)])
        return replies


class ChatSession:
    """A conversation with a model: keeps the messages and streams each reply."""

    def __init__(self, args: ChatArguments, sampling: SamplingArguments) -> None:
        self.tools = None  # checked before the model loads
        if args.tools:
            names = [name.strip() for name in args.tools.split(",") if name.strip()]
            self.tools = select_tools(names, args.search_index if "search" in names else None)
        self.system = args.system
        self.sampling, self.max_tool_rounds = sampling, args.max_tool_rounds
        self.remote = None
        if args.base_url:
            # With tools, whole replies: transformers' server drops a malformed call from a streamed reply, but
            # returns it as text in a whole one (see chatforge.serving.unparsable_replies_as_text).
            self.remote = RemoteChat(
                args.base_url, args.model_name_or_path, self.tools, sampling, args.max_tool_rounds, args.api_key,
                stream=not self.tools,
            )  # fmt: skip
            self.remote.model = self.remote.served_model()
            self.reset()
            return
        if looks_local(args.model_name_or_path) and not Path(args.model_name_or_path).exists():
            raise RecipeError(f"model not found: {args.model_name_or_path}; train one with scripts/run_sft.py")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        if not self.tokenizer.chat_template:
            raise RecipeError(f"{args.model_name_or_path} has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path).to(device).eval()
        self.config = sampling.generation_config(self.tokenizer, chat_stop_token_ids(self.tokenizer))
        self.config.num_return_sequences = 1
        torch.manual_seed(sampling.seed)
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, user_message: str, out=sys.stdout) -> str:
        """Add the user's message, stream the assistant's reply to `out`, and return it."""
        if self.remote is not None:
            return self.reply_remote(user_message, out)
        if self.tools:
            return self.reply_with_tools(user_message, out)
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

    def reply_with_tools(self, user_message: str, out=sys.stdout) -> str:
        """Like `reply`, through the tool loop: each call streams as the model writes it, then its result."""

        def show(_: int, message: dict) -> None:
            if message["role"] == "tool":
                write_dimmed(out, [tool_result_line(message)])

        conversation = [*self.messages, {"role": "user", "content": user_message}]
        generator = StreamingGenerator(self.model, self.tokenizer, out)
        (result,) = run_tool_loop(
            generator, self.tokenizer, [conversation], self.tools, self.sampling, self.max_tool_rounds, show
        )
        self.messages = result.messages
        return result.reply

    def reply_remote(self, user_message: str, out=sys.stdout) -> str:
        """Like `reply`, through the server: text streams as it arrives; calls and results are shown as they run."""

        def show(message: dict) -> None:
            if message["role"] == "assistant":
                calls = message.get("tool_calls", [])
                write_dimmed(
                    out, [f"<tool_call> {c['function']['name']}({c['function']['arguments']})" for c in calls]
                )
            else:
                write_dimmed(out, [tool_result_line(message)])

        conversation = [*self.messages, {"role": "user", "content": user_message}]
        reply, self.messages = self.remote.reply(conversation, out, show)
        return reply


def main(args: ChatArguments, sampling: SamplingArguments) -> None:
    session = ChatSession(args, sampling)
    if args.prompt is not None:
        session.reply(args.prompt)
        return
    tools = f", tools: {', '.join(session.tools)}" if session.tools else ""
    where = f"{session.remote.model} at {args.base_url}" if session.remote else args.model_name_or_path
    print(f"chatting with {where}{tools} (/reset for a new conversation, /exit to quit)")
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
