"""Chat-format evaluation: ask questions through the chat template and check the replies."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.generation import Generator, HFGenerator, SamplingArguments, chat_stop_token_ids


def load_chat_eval(path: str | Path) -> list[dict]:
    """Rows with `messages` (the prompt turns), `answer` (what a right reply contains) and `kind`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"chat eval file not found: {path}; `python scripts/run_data.py recipes/data.yaml` writes it"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = {"messages", "answer", "kind"} - set(row)
        if missing:
            raise RecipeError(f"{path}: row {i} lacks {sorted(missing)}")
    return rows


def reply_contains(reply: str, answer: str) -> bool:
    """True when `answer` occurs in `reply` as whole words, ignoring case."""
    return re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", reply, flags=re.IGNORECASE) is not None


def chat_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict]],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    generator: Generator | None = None,
) -> list[str]:
    """Greedy assistant replies to each conversation (rendered with the tokenizer's chat template).

    `generator` replaces HF generation (e.g. a vLLM backend); by default the model generates with HF.
    """
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    greedy = SamplingArguments(max_new_tokens=max_new_tokens, temperature=0.0)
    generator = generator or HFGenerator(model, tokenizer, batch_size)
    replies = generator(prompts, greedy, stop_token_ids=chat_stop_token_ids(tokenizer))
    return [r[0].strip() for r in replies]


def chat_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict], **kwargs) -> dict:
    """Accuracy per `kind` (e.g. fact, identity) and per kind/relation: the reply contains the row's answer."""
    if not rows:
        raise RecipeError("no chat eval rows")
    replies = chat_replies(model, tokenizer, [r["messages"] for r in rows], **kwargs)
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_relation: dict[str, list[bool]] = defaultdict(list)
    examples: dict[str, list[dict]] = defaultdict(list)
    for row, reply in zip(rows, replies):
        ok = reply_contains(reply, row["answer"])
        by_kind[row["kind"]].append(ok)
        by_relation[f"{row['kind']}/{row.get('relation', '')}"].append(ok)
        if len(examples[row["kind"]]) < 3:
            examples[row["kind"]].append({"question": row["messages"][-1]["content"], "reply": reply, "ok": ok})
    result: dict = {f"{kind}_accuracy": sum(oks) / len(oks) for kind, oks in sorted(by_kind.items())}
    result["counts"] = {kind: len(oks) for kind, oks in by_kind.items()}
    result["per_relation"] = {key: sum(oks) / len(oks) for key, oks in sorted(by_relation.items())}
    result["examples"] = dict(examples)
    return result
