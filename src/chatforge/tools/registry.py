"""Tools the assistant can call, the Hermes `<tool_call>` parser, and the dispatcher that runs a call.

>>> tools = default_tools(search_index=index)  # {"python": ..., "search": ..., "calculator": ...}
>>> prompt = tokenizer.apply_chat_template(messages, tools=[t.schema() for t in tools.values()], tokenize=False)
>>> calls = parse_tool_calls(completion)  # the assistant's text, up to or through </tool_call>
>>> messages += [{"role": "assistant", "content": "", "tool_calls": [c.to_message_call() for c in calls]}]
>>> messages += [run_tool_call(call, tools) for call in calls]  # {"role": "tool", "name": ..., "content": ...}
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from chatforge.configs import RecipeError
from chatforge.tokenizer import TOOL_CALL_END, TOOL_CALL_START
from chatforge.tools.calculator import CalculatorError, calculate
from chatforge.tools.python_sandbox import PythonSandbox
from chatforge.tools.search import SearchIndex, format_hits

# One call: from <tool_call> to </tool_call>, or (cut off by a stop string) to the next <tool_call> or the end.
TOOL_CALL_PATTERN = re.compile(
    rf"{re.escape(TOOL_CALL_START)}(.*?)(?:{re.escape(TOOL_CALL_END)}|(?={re.escape(TOOL_CALL_START)})|\Z)",
    re.DOTALL,
)


@dataclass
class Tool:
    """A function the model may call: `parameters` is the JSON schema of its keyword arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., str]

    def schema(self) -> dict[str, Any]:
        """The OpenAI function format that `tokenizer.apply_chat_template(..., tools=[...])` takes."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def __call__(self, **arguments: Any) -> str:
        return str(self.function(**arguments))


@dataclass
class ToolCall:
    """One parsed call; `error` says why it could not be read (then `name`/`arguments` may be empty)."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    raw: str = ""

    def to_message_call(self) -> dict[str, Any]:
        """The call as an entry of an assistant message's `tool_calls` (OpenAI style)."""
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _string_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": description}},
        "required": [name],
        "additionalProperties": False,
    }


def python_tool(sandbox: PythonSandbox | None = None) -> Tool:
    """`python(code)`: run code in the sandbox and return what it printed (or the error)."""
    sandbox = sandbox or PythonSandbox()
    return Tool(
        "python",
        "run Python code; returns what it prints",
        _string_parameter("code", "The Python program to run."),
        lambda code: sandbox.run(code).to_tool_text(),
    )


def search_tool(index: SearchIndex, k: int = 3) -> Tool:
    """`search(query)`: the `k` best documents of a local index, as numbered snippets."""
    return Tool(
        "search",
        "search the documents; returns the best passages",
        _string_parameter("query", "What to search for, e.g. a name or a question."),
        lambda query: format_hits(index.search(query, k=k)),
    )


def _calculator(expression: str) -> str:
    try:
        return str(calculate(expression))
    except CalculatorError as error:
        return f"error: {error}"


def calculator_tool() -> Tool:
    """`calculator(expression)`: exact arithmetic with + - * / // % ** and parentheses."""
    return Tool(
        "calculator",
        "exact arithmetic: + - * / // % ** and parentheses",
        _string_parameter("expression", "The expression, e.g. (17 + 3) * 2 ** 10 / 4."),
        _calculator,
    )


def default_tools(search_index: SearchIndex | None = None, sandbox: PythonSandbox | None = None) -> dict[str, Tool]:
    """The python and calculator tools, and search when an index is given, by name."""
    tools = [python_tool(sandbox), calculator_tool()]
    if search_index is not None:
        tools.append(search_tool(search_index))
    return {tool.name: tool for tool in tools}


TOOL_NAMES = ("python", "calculator", "search")


def select_tools(
    names: Sequence[str], search_index: str | Path | SearchIndex | None = None, sandbox: PythonSandbox | None = None
) -> dict[str, Tool]:
    """The tools called `names` (of TOOL_NAMES), in that order; `search` needs `search_index` (an index or the
    folder SearchIndex.save wrote, e.g. data/world/search)."""
    unknown = [name for name in names if name not in TOOL_NAMES]
    if unknown:
        raise RecipeError(f"tools: unknown tool {unknown[0]!r}; the tools are {', '.join(TOOL_NAMES)}")
    if not names:
        raise RecipeError(f"tools: name at least one of {', '.join(TOOL_NAMES)}")
    index = None
    if "search" in names:
        if search_index is None:
            raise RecipeError("tools: search needs a search index (search_index: a folder written by run_data.py)")
        index = search_index if isinstance(search_index, SearchIndex) else SearchIndex.load(search_index)
    available = default_tools(search_index=index, sandbox=sandbox)
    return {name: available[name] for name in dict.fromkeys(names)}


def as_function(tool: Tool) -> Callable[..., str]:
    """`tool` as a plain function with typed arguments and a Google-style docstring: the form TRL's GRPOTrainer
    takes as `tools=` (it builds the schema with transformers' `get_json_schema`). Calls are checked and run like
    `run_tool_call`'s, so a bad call returns its `error: ...` text rather than raising."""
    properties = tool.parameters.get("properties", {})
    required = set(tool.parameters.get("required", []))
    types = {"string": str, "integer": int, "number": float, "boolean": bool}
    parameters, annotations, lines = [], {}, []
    for name, spec in properties.items():
        annotation = types.get(spec.get("type"), str)
        default = inspect.Parameter.empty if name in required else None
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )
        annotations[name] = annotation
        lines.append(f"    {name}: {spec.get('description') or name}")

    def function(**arguments: Any) -> str:
        arguments = {k: v for k, v in arguments.items() if v is not None or k in required}
        return run_tool_call(ToolCall(tool.name, arguments), {tool.name: tool})["content"]

    function.__name__ = function.__qualname__ = tool.name
    function.__doc__ = f"{tool.description}\n\nArgs:\n" + "\n".join(lines) if lines else tool.description
    function.__signature__ = inspect.Signature(parameters, return_annotation=str)
    function.__annotations__ = {**annotations, "return": str}
    return function


def _parse_one(body: str) -> ToolCall:
    """A call's JSON body: {"name": ..., "arguments": {...} or a JSON string}; errors are kept, not raised."""
    raw = body.strip()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        return ToolCall(None, error=f"the tool call is not valid JSON ({error.msg} at position {error.pos})", raw=raw)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return ToolCall(None, error='the tool call must be a JSON object with a "name" string', raw=raw)
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models encode the arguments a second time
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return ToolCall(data["name"], error='"arguments" is a string that is not a JSON object', raw=raw)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(data["name"], error='"arguments" must be a JSON object', raw=raw)
    return ToolCall(data["name"], arguments, raw=raw)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<tool_call>{json}</tool_call>` in `text`, in order; the last may lack its closing tag."""
    return [_parse_one(match.group(1)) for match in TOOL_CALL_PATTERN.finditer(text)]


def run_tool_call(call: ToolCall, tools: Mapping[str, Tool] | Sequence[Tool]) -> dict[str, str]:
    """Run `call` and return the tool message; every failure becomes an `error: ...` content, never an exception."""
    if not isinstance(tools, Mapping):
        tools = {tool.name: tool for tool in tools}
    name = call.name or "unknown"
    if call.error is not None:
        content = f"error: {call.error}"
    elif name not in tools:
        content = f"error: unknown tool {name!r}; the tools are: {', '.join(sorted(tools))}"
    else:
        tool = tools[name]
        try:
            jsonschema.validate(call.arguments, tool.parameters)
        except jsonschema.ValidationError as error:
            content = f"error: invalid arguments for {name}: {error.message}"
        except jsonschema.SchemaError as error:
            content = f"error: the {name} tool has an invalid parameter schema: {error.message}"
        else:
            try:
                content = tool(**call.arguments)
            except Exception as error:  # noqa: BLE001 - a tool's failure is reported to the model, not raised
                content = f"error: {name} failed: {type(error).__name__}: {error}"
    return {"role": "tool", "name": name, "content": content}
