"""Chat through an OpenAI-compatible server, running chatforge's tools on this side, as the protocol has it.

>>> chat = RemoteChat("http://localhost:8000/v1", "outputs/sft", tools=select_tools(["calculator"]))
>>> reply, messages = chat.reply([{"role": "user", "content": "What is 347 * 829?"}])

The server (scripts/serve.py, `transformers serve`, `vllm serve --tool-call-parser hermes`, or any other) gets the
conversation and the tools' schemas and answers with text or `tool_calls`. Each call is run here
(`run_tool_call`: the Python sandbox, search, the calculator), its result goes back as a `tool` message, and the
server is asked again, until it answers or `max_tool_rounds` rounds of calls are spent (then the model gets one
more turn, as in `chatforge.tool_loop`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from chatforge.configs import RecipeError
from chatforge.generation import SamplingArguments
from chatforge.tools.registry import Tool, ToolCall, run_tool_call

Message = dict[str, Any]


def call_from_message(call: Mapping[str, Any]) -> ToolCall:
    """A `tool_calls` entry of an OpenAI message (arguments as a JSON string) as a ToolCall; bad JSON is an error
    the model is told about, never an exception."""
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, Mapping):
        return ToolCall(function.get("name"), dict(arguments))
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as error:
        return ToolCall(function.get("name"), error=f"arguments are not JSON ({error.msg}): {arguments!r}")
    if not isinstance(parsed, dict):
        return ToolCall(function.get("name"), error=f"arguments must be a JSON object, got {arguments!r}")
    return ToolCall(function.get("name"), parsed)


class RemoteChat:
    """A model behind an OpenAI-compatible endpoint; replies stream to `out` as they arrive (`stream=False`: whole
    replies, which transformers' server returns as text when it cannot parse a call; streamed, it drops that part)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tools: Mapping[str, Tool] | None = None,
        sampling: SamplingArguments | None = None,
        max_tool_rounds: int = 3,
        api_key: str = "none",
        stream: bool = True,
    ) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key)
        self.model = model
        self.tools = dict(tools or {})
        self.sampling = sampling or SamplingArguments(max_new_tokens=128, temperature=0.0)
        self.max_tool_rounds = max_tool_rounds
        self.stream = stream

    def served_model(self) -> str:
        """The model to name in requests: `self.model` if the server lists it, else the one model it serves."""
        with self.errors_explained():
            served = [entry.id for entry in self.client.models.list()]
        if self.model in served or not served:
            return self.model
        if len(served) == 1:
            return served[0]
        raise RecipeError(f"the server does not serve {self.model!r}; it serves: {', '.join(served)}")

    @contextmanager
    def errors_explained(self) -> Iterator[None]:
        """The server's failures as one-line RecipeErrors naming the server (no traceback for a refused
        connection or a rejected request)."""
        import openai

        try:
            yield
        except openai.APIConnectionError as error:
            cause = f" ({error.__cause__})" if error.__cause__ else ""
            raise RecipeError(
                f"cannot reach {self.client.base_url}{cause}; start a server, e.g. scripts/serve.py"
            ) from None
        except openai.APIStatusError as error:
            body = error.body if isinstance(error.body, dict) else {}
            inner = body.get("error")  # OpenAI and vLLM: {"error": {"message": ...}}; FastAPI: {"detail": ...}
            detail = (
                body.get("detail") or (inner.get("message") if isinstance(inner, dict) else inner) or error.message
            )
            raise RecipeError(f"{self.client.base_url} answered {error.status_code}: {detail}") from None

    def _request(self) -> dict[str, Any]:
        settings = self.sampling
        request: dict[str, Any] = {"model": self.model, "max_tokens": settings.max_new_tokens, "seed": settings.seed}
        request["temperature"] = max(settings.temperature, 0.0)
        if settings.temperature > 0:
            request["top_p"] = settings.top_p
        if settings.stop:
            request["stop"] = settings.stop
        if self.tools:
            request["tools"] = [tool.schema() for tool in self.tools.values()]
        return request

    def complete(self, messages: list[Message], out: TextIO | None = None) -> Message:
        """One assistant turn, written to `out` as it arrives (then a newline); returns the message, with
        `reasoning_content` and `tool_calls` (arguments as JSON text) when the server sent them."""
        text, reasoning, calls = [], [], {}
        with self.errors_explained():
            if self.stream:
                for chunk in self.client.chat.completions.create(messages=messages, stream=True, **self._request()):
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta
                    reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
                    if delta.content:
                        text.append(delta.content)
                        if out is not None:
                            out.write(delta.content)
                            out.flush()
                    for piece in delta.tool_calls or []:  # a call may arrive in pieces: join them by index
                        call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                        call["id"] = piece.id or call["id"]
                        if piece.function is not None:
                            call["name"] += piece.function.name or ""
                            call["arguments"] += piece.function.arguments or ""
            else:
                whole = self.client.chat.completions.create(messages=messages, **self._request()).choices[0].message
                text.append(whole.content or "")
                reasoning.append((whole.model_extra or {}).get("reasoning_content") or "")
                for index, call in enumerate(whole.tool_calls or []):
                    calls[index] = {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
                if out is not None:
                    out.write(text[0])
        if out is not None and "".join(text):
            out.write("\n")
        message: Message = {"role": "assistant", "content": "".join(text).strip()}
        if "".join(reasoning).strip():
            message["reasoning_content"] = "".join(reasoning).strip()
        if calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for _, c in sorted(calls.items())
            ]
        return message

    def reply(
        self,
        messages: list[Message],
        out: TextIO | None = sys.stdout,
        on_message: Callable[[Message], None] | None = None,
    ) -> tuple[str, list[Message]]:
        """Continue the conversation until the model answers; returns the answer and every message."""
        messages = [dict(m) for m in messages]
        for round_index in range(self.max_tool_rounds + 1):
            message = self.complete(messages, out)
            messages.append(message)
            if on_message is not None:
                on_message(message)
            if not message.get("tool_calls") or round_index == self.max_tool_rounds:
                return message["content"], messages
            for entry in message["tool_calls"]:
                result = run_tool_call(call_from_message(entry), self.tools)
                if entry.get("id"):
                    result["tool_call_id"] = entry["id"]
                messages.append(result)
                if on_message is not None:
                    on_message(result)
        raise AssertionError("unreachable: the last round returns")
