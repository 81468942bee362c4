"""Generation with tools: the assistant calls a tool, reads its result and goes on, until it answers.

>>> tools = default_tools(search_index=SearchIndex.load("data/world/search"))
>>> generator = HFGenerator(model, tokenizer)  # or VLLMGenerator(folder, tokenizer): the same call
>>> [result] = run_tool_loop(generator, tokenizer, [[{"role": "user", "content": "What is 347 * 829?"}]], tools)
>>> result.reply, result.tool_calls, result.messages[-2]["content"]  # the answer, 1, the calculator's "287663"

Each round renders every unfinished conversation with the chat template (tool schemas in the system turn,
`add_generation_prompt=True`) and generates its assistant turn in one batch. Generation stops at the end of the
turn or at `</tool_call>`. A turn with calls is appended as an assistant message with `tool_calls`, each call is
run (`run_tool_call`, which never raises) and its result appended as a `tool` message; then the next round goes
on from the re-rendered conversation. A turn without calls is the reply. After `max_tool_rounds` rounds of calls
the model gets one more turn; if it calls again, the loop stops there with what it has (`finished=False`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.generation import Generator, SamplingArguments, chat_stop_token_ids
from chatforge.tokenizer import TOOL_CALL_END, TOOL_CALL_START
from chatforge.tools.registry import Tool, ToolCall, parse_tool_calls, run_tool_call

Message = dict[str, Any]
# Called with (conversation index, message) for every message the loop appends, as it appends it.
EventHandler = Callable[[int, Message], None]
ERROR_PREFIX = "error:"  # how run_tool_call reports a call that could not run


@dataclass
class ToolLoopResult:
    """One conversation after the loop: the final reply, every message, and what the tools did."""

    reply: str
    messages: list[Message]
    tool_calls: int = 0
    tool_errors: int = 0  # calls whose result is an `error: ...` (unreadable call, unknown tool, bad arguments...)
    tools_called: list[str] = field(default_factory=list)  # tool names in call order
    rounds: int = 0  # generation rounds
    finished: bool = True  # False: stopped after max_tool_rounds with a call it did not run


def tool_stops(tokenizer: PreTrainedTokenizerBase, sampling: SamplingArguments) -> tuple[list[int], SamplingArguments]:
    """Stop ids (end of turn, and `</tool_call>`, where a call is complete and the tool must run) and the sampling
    settings; a vocabulary without a `</tool_call>` token stops at the string instead."""
    stops = chat_stop_token_ids(tokenizer)
    if TOOL_CALL_END in tokenizer.get_vocab():
        return [*stops, tokenizer.convert_tokens_to_ids(TOOL_CALL_END)], sampling
    return stops, replace(sampling, stop=[*(sampling.stop or []), TOOL_CALL_END])


def _as_mapping(tools: Mapping[str, Tool] | Sequence[Tool] | None) -> dict[str, Tool]:
    if not tools:
        return {}
    return dict(tools) if isinstance(tools, Mapping) else {tool.name: tool for tool in tools}


def assistant_call_message(text: str, calls: list[ToolCall]) -> Message:
    """The assistant message for a turn that made `calls`: structured `tool_calls` when every call parsed (the
    template renders them in canonical form), else the raw text with its last call closed, so the model sees
    what it wrote next to the error."""
    if any(call.error is not None for call in calls):
        raw = text.strip()
        if raw.rfind(TOOL_CALL_START) > raw.rfind(TOOL_CALL_END):
            raw += TOOL_CALL_END  # vLLM leaves the stop token out of the text; HF keeps it
        return {"role": "assistant", "content": raw}
    content = text[: text.find(TOOL_CALL_START)].strip()
    return {"role": "assistant", "content": content, "tool_calls": [call.to_message_call() for call in calls]}


def run_tool_loop(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Sequence[Message]],
    tools: Mapping[str, Tool] | Sequence[Tool] | None,
    sampling: SamplingArguments | None = None,
    max_tool_rounds: int = 3,
    on_message: EventHandler | None = None,
) -> list[ToolLoopResult]:
    """Generate each conversation's assistant turn, running the tools it calls; one result per conversation.

    `tools`: by name or as a list; None or empty offers none (the prompt has no tool list, nothing is run).
    `sampling`: one sample per prompt (default: greedy, 128 new tokens per round). The conversations are copied.
    """
    sampling = sampling or SamplingArguments(max_new_tokens=128, temperature=0.0)
    if sampling.num_samples != 1:
        raise RecipeError(f"the tool loop takes one sample per conversation, got num_samples={sampling.num_samples}")
    if max_tool_rounds < 0:
        raise RecipeError(f"max_tool_rounds must be >= 0, got {max_tool_rounds}")
    by_name = _as_mapping(tools)
    schemas = [tool.schema() for tool in by_name.values()] or None
    stops, sampling = tool_stops(tokenizer, sampling)
    results = [ToolLoopResult("", [dict(m) for m in conversation]) for conversation in conversations]

    def append(index: int, message: Message) -> None:
        results[index].messages.append(message)
        if on_message is not None:
            on_message(index, message)

    active = list(range(len(results)))
    for round_index in range(max_tool_rounds + 1):
        if not active:
            break
        prompts = [
            tokenizer.apply_chat_template(
                results[i].messages, tools=schemas, add_generation_prompt=True, tokenize=False
            )
            for i in active
        ]
        outputs = generator(prompts, sampling, stop_token_ids=stops)
        still_active = []
        for index, samples in zip(active, outputs):
            result, text = results[index], samples[0]
            result.rounds += 1
            calls = parse_tool_calls(text) if by_name else []
            if not calls:
                result.reply = text.strip()
                append(index, {"role": "assistant", "content": result.reply})
                continue
            message = assistant_call_message(text, calls)
            append(index, message)
            if round_index == max_tool_rounds:  # no rounds left: stop with what it has
                result.reply, result.finished = message["content"], False
                continue
            for call in calls:
                response = run_tool_call(call, by_name)
                result.tool_calls += 1
                result.tools_called.append(response["name"])
                result.tool_errors += response["content"].startswith(ERROR_PREFIX)
                append(index, response)
            still_active.append(index)
        active = still_active
    return results
