"""Tools for the assistant (issue #6): a sandboxed Python interpreter, local search, a calculator.

>>> tools = default_tools(search_index=SearchIndex.from_documents(texts))
>>> [run_tool_call(call, tools) for call in parse_tool_calls(completion)]  # the tool messages to append
"""

from chatforge.tools.calculator import CalculatorError, calculate
from chatforge.tools.python_sandbox import (
    PythonSandbox,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    kill_processes_of,
    processes_of,
)
from chatforge.tools.registry import (
    Tool,
    ToolCall,
    as_function,
    calculator_tool,
    default_tools,
    parse_tool_calls,
    python_tool,
    run_tool_call,
    search_tool,
    select_tools,
)
from chatforge.tools.search import SearchDocument, SearchHit, SearchIndex, format_hits, make_snippet

__all__ = [
    "CalculatorError",
    "PythonSandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SearchDocument",
    "SearchHit",
    "SearchIndex",
    "Tool",
    "ToolCall",
    "calculate",
    "as_function",
    "calculator_tool",
    "default_tools",
    "format_hits",
    "kill_processes_of",
    "make_snippet",
    "parse_tool_calls",
    "processes_of",
    "python_tool",
    "run_tool_call",
    "search_tool",
    "select_tools",
]
