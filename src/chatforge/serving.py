"""Serve a chatforge model over an OpenAI-compatible HTTP API, with `transformers serve` doing the work.

>>> serve(ServeArguments(model_name_or_path="outputs/sft", port=8000))  # blocks; Ctrl-C stops it

transformers' server answers /v1/chat/completions (streamed or not, with `tools`), /v1/completions, /v1/responses
and /v1/models. It renders requests with the model's chat template and splits replies back into content,
reasoning and tool calls with the tokenizer's response template (chat_templates/chatml_response.json, saved by
train_tokenizer.py), so a client gets structured `tool_calls` and runs the tools itself, as the OpenAI protocol
has it (`scripts/chat.py --base_url ... --tools ...` does). Three small wrappers mend transformers 5.19's server
(`list_only`, `unparsable_replies_as_text`, `LenientStreamParser`). On GPUs, `vllm serve` with
`--tool-call-parser hermes` serves the same folder too (README, Serving).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatforge.configs import RecipeError
from chatforge.data import require_model

logger = logging.getLogger(__name__)


@dataclass
class ServeArguments:
    """Which model to serve, where, and how."""

    model_name_or_path: str = field(
        default="outputs/sft",
        metadata={"help": "Saved folder or Hub id; clients name it as the request's `model` (see /v1/models)."},
    )
    host: str = field(default="localhost", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto."})
    dtype: str = field(default="auto", metadata={"help": "Weights' dtype: auto (as saved), bfloat16, float32..."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: sdpa, flash_attention_2, ... (None: the default)."}
    )
    continuous_batching: bool = field(
        default=False, metadata={"help": "Batch concurrent requests together (paged attention; for a GPU)."}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (GPU; first requests slower)."})
    enable_cors: bool = field(default=False, metadata={"help": "Allow browser pages from any origin to call it."})
    seed: int | None = field(default=None, metadata={"help": "Seed torch once at start (sampled replies repeat)."})
    log_level: str = field(default="warning", metadata={"help": "transformers' log level: info, warning, error."})

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise RecipeError(f"port must be between 1 and 65535, got {self.port}")


def check_servable(model_name_or_path: str) -> None:
    """Fail fast, before the server starts: the model must exist (locally or on the Hub) and have a chat template."""
    require_model(model_name_or_path, "model", "a trained folder such as outputs/sft", "train one with run_sft.py")
    path = Path(model_name_or_path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise RecipeError(f"{path} is not a model folder (no config.json)")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    except OSError as error:  # a Hub id that cannot be fetched (offline, private, misspelt)
        raise RecipeError(f"cannot load {model_name_or_path}: {str(error).splitlines()[0]}") from None
    if not tokenizer.chat_template:
        raise RecipeError(f"{model_name_or_path} has no chat template, so it cannot take chat requests")


def list_only(model_id: str) -> None:
    """Make /v1/models list the served model.

    transformers 5.19's server lists the models of the local Hub cache, never the one it was started with, and
    answers 500 when no cache folder exists yet (a fresh machine, or offline). Clients such as chat UIs ask
    /v1/models first, so a server pinned to one model lists that model and nothing else.
    """
    from transformers.cli.serving.model_manager import ModelManager

    entry = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "chatforge"}
    ModelManager.get_gen_models = staticmethod(lambda cache_dir=None: [dict(entry)])


def unparsable_replies_as_text() -> None:
    """Answer a reply the response template cannot parse with its text, as written.

    A small model sometimes writes a tool call that is not JSON (`<tool_call>{"name": calc</tool_call>`).
    transformers 5.19's server then answers 500 for a whole (non-streamed) reply, because the parser raises; vLLM's
    Hermes parser returns such a reply as text, and so does this: the client sees what the model wrote, with
    `finish_reason: stop`. A streamed reply drops the unparsable part instead (LenientStreamParser).
    """
    import functools

    from transformers.cli.serving import chat_completion, response
    from transformers.cli.serving.utils import get_response_template

    for module in (chat_completion, response):
        parse = module.parse_assistant_message
        if getattr(parse, "_chatforge_lenient", False):
            continue

        @functools.wraps(parse)
        def parse_or_text(processor, model, generated_ids, input_ids, cleaned_content="", _parse=parse):
            try:
                return _parse(processor, model, generated_ids, input_ids=input_ids, cleaned_content=cleaned_content)
            except ValueError as error:
                logger.warning("reply not parsed, sent as text: %s", str(error).splitlines()[0])
                return cleaned_content, None, None

        parse_or_text._chatforge_lenient = True
        module.parse_assistant_message = parse_or_text

        build = module.build_response_parser

        @functools.wraps(build)
        def build_lenient(processor, model, input_ids, _build=build):
            parser = _build(processor, model, input_ids)
            if parser is None:
                return None
            from transformers.utils.chat_parsing.response_parser import ResponseParser

            template = get_response_template(processor, model)
            return LenientStreamParser(
                parser, lambda: ResponseParser(template, prefix=template.get("start_anchor", ""))
            )

        module.build_response_parser = build_lenient


class LenientStreamParser:
    """transformers' streaming ResponseParser, minus its failure mode: when a closed tool call is not JSON, `feed`
    raises, and transformers 5.19's server then ends the stream with an error event whose message it does not
    escape (a newline in it breaks the event's JSON, and OpenAI clients fail to decode the stream). This drops the
    unparsable region, as transformers already does for one left open at the end, and parses what follows with a
    fresh parser (`restart`)."""

    def __init__(self, parser: Any, restart: Callable[[], Any]) -> None:
        self._parser, self._restart = parser, restart
        self.initial_events = parser.initial_events

    def feed(self, text: str) -> list[dict]:
        try:
            return self._parser.feed(text)
        except ValueError as error:
            logger.warning("streamed reply: unparsable part dropped: %s", str(error).splitlines()[0])
            self._parser = self._restart()
            return []

    def finalize(self) -> tuple[dict, list[dict]]:
        return self._parser.finalize()


def serve(args: ServeArguments) -> None:
    """Check the model, then run transformers' OpenAI-compatible server for it until interrupted."""
    from transformers.utils.import_utils import is_serve_available

    check_servable(args.model_name_or_path)
    if not is_serve_available():
        raise RecipeError("serving needs FastAPI, uvicorn and openai: pip install -e '.[serve]'")
    from transformers.cli.serve import Serve

    list_only(args.model_name_or_path)
    unparsable_replies_as_text()
    print(
        f"serving {args.model_name_or_path} at http://{args.host}:{args.port}/v1 "
        "(/chat/completions, /completions, /responses, /models); Ctrl-C stops it",
        flush=True,
    )
    Serve(
        force_model=args.model_name_or_path,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        continuous_batching=args.continuous_batching,
        compile=args.compile,
        enable_cors=args.enable_cors,
        default_seed=args.seed,
        log_level=args.log_level,
    )


def free_port(host: str = "localhost") -> int:
    """A port nothing listens on now (for a server started next)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_until_serving(port: int, process: subprocess.Popen, timeout: float = 180, host: str = "localhost") -> None:
    """Return once the server started as `process` answers /health; RuntimeError if it exits or is not up in time."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it answered")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer on port {port} within {timeout:.0f} s")
        time.sleep(0.5)


@contextmanager
def running_server(command: list[str], port: int, timeout: float = 180, **popen: Any) -> Iterator[subprocess.Popen]:
    """Start `command` (a server that will listen on `port`, e.g. scripts/serve.py), wait until it answers, and stop
    it on leaving. If it exits or is not up within `timeout` s, RuntimeError carries the end of its output."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, **popen)
        try:
            try:
                wait_until_serving(port, process, timeout)
            except RuntimeError as error:
                log.seek(0)
                raise RuntimeError(f"{error}:\n{log.read()[-3000:]}") from None
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
