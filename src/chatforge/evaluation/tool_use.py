"""Tool use: does the assistant call the right tool when one is needed, none when it is not, and answer right?

Rows (data/world/tools_eval.jsonl) hold `messages` (the prompt turns), `answer` (what a right reply contains),
`kind` (multiplication, counting, search, no_tool) and `expected_tools` (any of which is a right call; empty:
no call is needed). Each question is asked twice: through the tool loop with the tools offered, and without
tools (no tool list in the prompt), so the gain from the tools shows beside the rate of calls.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.evaluation.chat_qa import reply_contains
from chatforge.generation import Generator, SamplingArguments
from chatforge.tool_loop import ToolLoopResult, run_tool_loop
from chatforge.tools.registry import Tool

REQUIRED = ("messages", "answer", "kind", "expected_tools")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def answer_correct(reply: str, answer: str) -> bool:
    """A number is right when it is the reply's last number ("347 × 829 = 287663."; "There are 3 r's in ..."), so a
    stray digit does not count; any other answer when the reply contains it as whole words."""
    if re.fullmatch(r"-?\d+", answer.strip()):
        numbers = NUMBER.findall(reply)
        return bool(numbers) and numbers[-1].replace(",", "").rstrip(".") == answer.strip()
    return reply_contains(reply, answer)


def load_tools_eval(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a tools eval file, checked for the fields the metrics need."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"tools eval file not found: {path}; `python scripts/run_data.py recipes/data.yaml` writes it"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise RecipeError(f"{path}: row {i} lacks {missing}")
    if not rows:
        raise RecipeError(f"{path}: no rows")
    return rows


def _rate(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def _example(row: dict, result: ToolLoopResult, ok: bool) -> dict[str, Any]:
    return {
        "question": row["messages"][-1]["content"],
        "reply": result.reply,
        "tools_called": result.tools_called,
        "tool_results": [m["content"][:200] for m in result.messages if m["role"] == "tool"],
        "ok": ok,
    }


def tool_use_metrics(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    tools: Mapping[str, Tool],
    max_new_tokens: int = 96,
    max_tool_rounds: int = 3,
    without_tools: bool = True,
) -> dict[str, Any]:
    """Accuracy with and without tools, tool-call rates per kind, unneeded calls, errors; greedy decoding.

    Per kind: `{kind}_accuracy_with_tools` / `_without_tools` (the final reply gives the answer: answer_correct),
    `{kind}_call_rate` (at least one call ran), `{kind}_right_tool_rate` (one of `expected_tools` was called).
    `unneeded_call_rate`: calls on the questions that need none (kind no_tool).
    """
    if not rows:
        raise RecipeError("tool use: no eval rows")
    greedy = SamplingArguments(max_new_tokens=max_new_tokens, temperature=0.0)
    conversations = [row["messages"] for row in rows]
    with_tools = run_tool_loop(generator, tokenizer, conversations, tools, greedy, max_tool_rounds)
    plain = run_tool_loop(generator, tokenizer, conversations, None, greedy) if without_tools else None
    by_kind: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    examples: dict[str, list[dict]] = defaultdict(list)
    for i, (row, result) in enumerate(zip(rows, with_tools)):
        kind, ok = row["kind"], answer_correct(result.reply, str(row["answer"]))
        stats = by_kind[kind]
        stats["with"].append(ok)
        stats["called"].append(result.tool_calls > 0)
        stats["right_tool"].append(any(name in row["expected_tools"] for name in result.tools_called))
        if plain is not None:
            stats["without"].append(answer_correct(plain[i].reply, str(row["answer"])))
        if len(examples[kind]) < 2:
            examples[kind].append(_example(row, result, ok))
    calls = sum(r.tool_calls for r in with_tools)
    errors = sum(r.tool_errors for r in with_tools)
    metrics: dict[str, Any] = {"accuracy_with_tools": _rate([ok for s in by_kind.values() for ok in s["with"]])}
    if plain is not None:
        metrics["accuracy_without_tools"] = _rate([ok for s in by_kind.values() for ok in s["without"]])
    for kind, stats in sorted(by_kind.items()):
        metrics[f"{kind}_accuracy_with_tools"] = _rate(stats["with"])
        if plain is not None:
            metrics[f"{kind}_accuracy_without_tools"] = _rate(stats["without"])
        metrics[f"{kind}_call_rate"] = _rate(stats["called"])
        if kind != "no_tool":
            metrics[f"{kind}_right_tool_rate"] = _rate(stats["right_tool"])
    if "no_tool" in by_kind:
        metrics["unneeded_call_rate"] = _rate(by_kind["no_tool"]["called"])
    metrics.update(
        tool_calls=calls,
        tool_errors=errors,
        tool_error_rate=errors / calls if calls else 0.0,
        unfinished=sum(not r.finished for r in with_tools),
        num_questions=len(rows),
        examples=dict(examples),
    )
    return metrics
