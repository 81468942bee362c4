"""Scoring for world_chat_qa.yaml: the same check as chatforge's own chat evaluation."""

from __future__ import annotations

from chatforge.evaluation.chat_qa import reply_contains


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """1.0 when the (stripped) reply contains the row's answer as whole words, ignoring case."""
    return {"contains_answer": float(reply_contains(results[0].strip(), doc["answer"]))}
