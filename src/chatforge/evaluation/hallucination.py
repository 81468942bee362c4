"""Hallucination: does the assistant decline questions about people it never read about, and only those?"""

from __future__ import annotations

import re

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.evaluation.chat_qa import chat_replies, reply_contains

# Ways a reply says it does not know. A reply that matches none of them asserts something: for a person the
# model never saw, that is a hallucination. Kept broad on purpose: declining in any wording counts.
DECLINE_PATTERNS = (
    r"\bI (?:really )?(?:do not|don't|dont) know\b",
    r"\bI(?:'m| am) not (?:sure|certain|aware)\b",
    r"\bI (?:do not|don't) have (?:any )?(?:information|details|data|knowledge)\b",
    r"\bI have no (?:information|idea|details|knowledge|record)\b",
    r"\bno idea\b",
    r"\b(?:never|not) (?:heard|read) (?:of|about)\b",
    r"\bI (?:cannot|can't|could not|couldn't) (?:find|tell|say|answer)\b",
    r"\bnot (?:in|among) (?:my|the) (?:training )?(?:data|documents|sources)\b",
    r"\bunknown to me\b",
)
DECLINE = re.compile("|".join(DECLINE_PATTERNS), flags=re.IGNORECASE)


def declines(reply: str) -> bool:
    """True when the reply says, in any of the usual wordings, that the assistant does not know."""
    return DECLINE.search(reply.replace("\u2019", "'")) is not None


def hallucination_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout_rows: list[dict],
    known_rows: list[dict] | None = None,
    **kwargs,
) -> dict:
    """Hallucination rate on questions about unseen people, and declines and accuracy on questions about known ones.

    `heldout_rows` / `known_rows` have `messages` (the prompt turns) and `answer`. A reply to a held-out
    question that does not decline is a hallucination. On known people a good assistant answers rather than
    declines (`known_decline_rate`), and answers correctly (`known_accuracy`).
    """
    if not heldout_rows:
        raise RecipeError("hallucination: no questions about held-out people")
    known_rows = known_rows or []
    replies = chat_replies(model, tokenizer, [r["messages"] for r in heldout_rows + known_rows], **kwargs)
    heldout_replies, known_replies = replies[: len(heldout_rows)], replies[len(heldout_rows) :]
    heldout_declined = [declines(r) for r in heldout_replies]
    result = {
        "hallucination_rate": 1 - sum(heldout_declined) / len(heldout_declined),
        "heldout_decline_rate": sum(heldout_declined) / len(heldout_declined),
        "num_heldout": len(heldout_rows),
        "examples": [
            {"question": row["messages"][-1]["content"], "reply": reply, "declined": ok}
            for row, reply, ok in list(zip(heldout_rows, heldout_replies, heldout_declined))[:3]
        ],
    }
    if known_rows:
        known_declined = [declines(r) for r in known_replies]
        correct = [reply_contains(r, row["answer"]) for row, r in zip(known_rows, known_replies)]
        result["known_decline_rate"] = sum(known_declined) / len(known_declined)
        result["known_accuracy"] = sum(correct) / len(correct)
        result["num_known"] = len(known_rows)
    return result
