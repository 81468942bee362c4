"""Conversation datasets in the `messages` format: schema validation and an OpenAssistant tree loader."""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatforge.configs import RecipeError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _column_names(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if isinstance(names, (list, tuple)) else None


def _message_problem(messages: Any) -> str | None:
    """What is wrong with one conversation, or None if it is a valid chat to train on."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        return f"`messages` must be a list of messages, got {type(messages).__name__}"
    if not messages:
        return "empty conversation (no messages)"
    previous: Mapping[str, Any] | None = None
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, Mapping):
            return f"{where} is a {type(message).__name__}, not a dict with role and content"
        role = message.get("role")
        if role is None:
            return f"{where} has no role"
        if role not in ROLES:
            return f"{where} has unknown role {role!r}; valid roles are {', '.join(ROLES)}"
        has_calls = bool(message.get("tool_calls"))
        content = message.get("content")
        if content is None and not (role == "assistant" and has_calls):
            return f"{where} ({role}) has no content"
        if (
            content is not None
            and not isinstance(content, str)
            and not (role == "tool" and isinstance(content, Mapping))
        ):
            return f"{where} ({role}) content must be a string, got {type(content).__name__}"
        if role == "system":
            if index != 0:
                return f"{where} is a system message; a system message may only come first"
        elif role == "user":
            if previous is not None and previous["role"] not in ("system", "assistant"):
                return f"{where} (user) follows a {previous['role']} message; user and assistant turns must alternate"
        elif role == "assistant":
            if previous is None or previous["role"] not in ("user", "tool"):
                after = "the start" if previous is None else f"a {previous['role']} message"
                return f"{where} (assistant) comes after {after}; the conversation must alternate user/assistant"
        elif previous is None or not (
            previous["role"] == "tool" or (previous["role"] == "assistant" and previous.get("tool_calls"))
        ):
            return f"{where} (tool) must follow an assistant message with tool_calls or another tool message"
        previous = message
    if previous is None or previous["role"] != "assistant":
        last = "nothing" if previous is None else f"a {previous['role']} message"
        return f"the conversation ends with {last}; it must end with an assistant turn"
    return None


def row_tools(row: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """A row's tool schemas for the chat template: its `tools` column (a list, or a JSON string as TRL also takes
    it), or None when it offers none."""
    tools = row.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as err:
            raise RecipeError(f"a row's `tools` is not valid JSON: {err}") from None
    if tools is not None and not isinstance(tools, list):
        raise RecipeError(f"a row's `tools` must be a list of tool schemas, got {type(tools).__name__}")
    return tools or None


def validate_conversations(dataset: Any, name: str, max_rows_checked: int | None = None) -> int:
    """Check that every row (or the first `max_rows_checked`) holds a valid `messages` conversation.

    `dataset` is a `datasets.Dataset` or a list of row dicts. Raises RecipeError with one line naming the
    dataset, the row and the problem; returns the number of rows checked.
    """
    columns = _column_names(dataset)
    if columns is not None and "messages" not in columns:
        raise RecipeError(f"{name}: no `messages` column; the dataset has columns: {', '.join(columns) or '(none)'}")
    total = len(dataset)
    limit = total if max_rows_checked is None else min(total, max_rows_checked)
    rows = dataset.select_columns(["messages"]).select(range(limit)) if columns is not None else dataset[:limit]
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping) or "messages" not in row:
            keys = ", ".join(row) if isinstance(row, Mapping) else type(row).__name__
            raise RecipeError(f"{name}: row {index} has no `messages` field (it has: {keys})")
        problem = _message_problem(row["messages"])
        if problem is not None:
            raise RecipeError(f"{name}: row {index}: {problem}")
    return limit


def check_generation_tags(chat_template: str) -> None:
    """Raise RecipeError if the template lacks `{% generation %}` tags, which assistant-only loss needs."""
    code = re.sub(r"\{#.*?#\}", "", chat_template or "", flags=re.DOTALL)  # a tag inside a comment is no tag
    if not GENERATION_TAG.search(code):
        raise RecipeError(
            "the chat template has no {% generation %} tags, which assistant_only_loss needs to mark the "
            "assistant's tokens; use chat_templates/chatml.jinja (or add the tags around assistant turns)"
        )


# ---------------------------------------------------------------------------------------------------------------
# OpenAssistant (oasst1/oasst2) message trees
# ---------------------------------------------------------------------------------------------------------------


def _read_trees(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise RecipeError(f"OpenAssistant tree file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _usable(node: Mapping[str, Any], lang: str | None) -> bool:
    """A node worth following: not deleted, in `lang`, not rejected in review, with text and a known role."""
    return (
        not node.get("deleted", False)
        and node.get("review_result", True) is not False
        and (lang is None or node.get("lang", lang) == lang)
        and node.get("role") in OASST_ROLES
        and bool((node.get("text") or "").strip())
    )


def _preference(node: Mapping[str, Any]) -> tuple[float, float]:
    """Sort key of a reply: its rank (0 best; unranked last), then fewer net thumbs-up (+1 minus -1) first."""
    rank = node.get("rank")
    emojis = node.get("emojis") or {}
    votes = emojis.get("+1", 0) - emojis.get("-1", 0) - 2 * emojis.get("red_flag", 0)
    return (float("inf") if rank is None else float(rank), -float(votes))


def best_reply(node: Mapping[str, Any], lang: str | None = "en") -> Mapping[str, Any] | None:
    """The highest-ranked usable reply of `node` with the other role (ties: best votes, then first)."""
    wanted = "assistant" if node.get("role") == "prompter" else "prompter"
    replies = [r for r in node.get("replies") or [] if _usable(r, lang) and r.get("role") == wanted]
    return min(replies, key=_preference) if replies else None  # min() keeps the first of equal keys


def tree_conversation(tree: Mapping[str, Any], lang: str | None = "en") -> list[dict[str, str]] | None:
    """Follow the best reply at each level from the root prompt; None if no assistant reply is left."""
    node: Mapping[str, Any] | None = tree.get("prompt", tree)
    if node is None or not _usable(node, lang) or node.get("role") != "prompter":
        return None
    messages = []
    while node is not None:
        messages.append({"role": OASST_ROLES[node["role"]], "content": node["text"].strip()})
        node = best_reply(node, lang)
    if messages[-1]["role"] == "user":
        messages.pop()
    return messages if len(messages) >= 2 else None


def load_oasst_trees(
    path_or_rows: str | Path | Iterable[Mapping[str, Any]], lang: str | None = "en"
) -> datasets.Dataset:
    """OpenAssistant message trees (a .jsonl[.gz] file or tree dicts) as a Dataset of best-path conversations.

    Columns: `messages` (alternating user/assistant, ending with the assistant) and `tree_id`. Trees whose
    root is deleted, not in `lang` (None keeps every language), or without an assistant reply are skipped.
    """
    import datasets

    if isinstance(path_or_rows, (str, Path)):
        trees = _read_trees(Path(path_or_rows))
    else:
        trees = list(path_or_rows)
    rows = []
    for tree in trees:
        if tree.get("tree_state", "ready_for_export") != "ready_for_export":
            continue
        messages = tree_conversation(tree, lang)
        if messages is not None:
            tree_id = tree.get("message_tree_id") or tree.get("prompt", {}).get("message_id", "")
            rows.append({"messages": messages, "tree_id": str(tree_id)})
    logger.info("OpenAssistant: %d conversations from %d trees", len(rows), len(trees))
    return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"messages": [], "tree_id": []})
