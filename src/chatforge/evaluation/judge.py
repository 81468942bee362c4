"""The scripted judge (the world's simulated human) scoring a policy's own replies: what RLHF is for."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.evaluation.chat_qa import chat_replies
from chatforge.generation import Generator


def load_judge_rows(path: str | Path) -> list[dict[str, Any]]:
    """Questions for the judge (prefs/judge_eval.jsonl): `messages`, `kind`, `relation`, `subject`, `answer`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"judge eval file not found: {path}; `python scripts/run_data.py recipes/data.yaml` writes it"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = {"messages", "kind", "subject", "answer"} - set(row)
        if missing:
            raise RecipeError(f"{path}: row {i} lacks {sorted(missing)}")
    return rows


def load_judge(judge_eval_file: str | Path, world: str | Path, max_rows: int | None = None) -> tuple[Any, list[dict]]:
    """The world's judge (from its world.json folder) and its questions; a cap takes a seeded sample in file order,
    so it keeps every kind of question (the file lists them by kind)."""
    from chatforge.world import Judge
    from chatforge.world.entities import load_world

    rows = load_judge_rows(judge_eval_file)
    if max_rows and max_rows < len(rows):
        keep = sorted(random.Random(0).sample(range(len(rows)), max_rows))
        rows = [rows[i] for i in keep]
    return Judge(load_world(world)), rows


def judge_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, Any]],
    judge,
    max_new_tokens: int = 64,
    generator: Generator | None = None,
    scorer: Callable[..., list[float]] | None = None,
) -> dict[str, Any]:
    """Greedy replies to each question, scored by `judge` (a chatforge.world.Judge): means of its verdicts.

    `judge_score` is the mean total (0-3). Rates: `correct` (known people answered right, unknown ones declined),
    `wrong` (a false value stated), `declined`, `concise`, `polite`, over all questions, and `fact_correct` /
    `heldout_correct` per kind of question.
    """
    if not rows:
        raise RecipeError("no judge eval questions")
    replies = chat_replies(
        model, tokenizer, [r["messages"] for r in rows], max_new_tokens=max_new_tokens, generator=generator
    )
    verdicts = [judge.score(row, reply) for row, reply in zip(rows, replies)]
    n = len(verdicts)
    result: dict[str, Any] = {
        "judge_score": sum(v.total for v in verdicts) / n,
        "correct": sum(v.correct for v in verdicts) / n,
        "wrong": sum(v.wrong for v in verdicts) / n,
        "declined": sum(v.declined for v in verdicts) / n,
        "concise": sum(v.concise for v in verdicts) / n,
        "polite": sum(v.polite for v in verdicts) / n,
        "mean_words": sum(v.words for v in verdicts) / n,
    }
    if scorer is not None:
        completions = [[{"role": "assistant", "content": reply}] for reply in replies]
        scores = scorer(prompts=[r["messages"] for r in rows], completions=completions)
        result["reward_model_score"] = sum(scores) / n
    for kind in sorted({row["kind"] for row in rows}):
        picked = [v.correct for row, v in zip(rows, verdicts) if row["kind"] == kind]
        result[f"{kind}_correct"] = sum(picked) / len(picked)
    result["examples"] = [
        {"question": row["messages"][-1]["content"], "reply": reply, "score": verdict.total}
        for row, reply, verdict in list(zip(rows, replies, verdicts))[:6]
    ]
    return result
