"""World fact completion: does the base model finish "X was born in" with the right answer?"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.generation import Generator, HFGenerator, SamplingArguments


def load_facts(path: str | Path, split: str | None = "train") -> list[dict]:
    """Rows of a world facts table (JSON lines with prompt, answer, relation, split)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"facts file not found: {path}; `python scripts/run_data.py recipes/data.yaml` writes it")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for key in ("prompt", "answer", "relation"):
        if rows and key not in rows[0]:
            raise RecipeError(f"{path}: rows need a '{key}' field; found {sorted(rows[0])}")
    return [r for r in rows if split is None or r.get("split") == split]


def completion_matches(completion: str, answer: str) -> bool:
    """True when the completion starts with the answer as whole words (case-insensitive)."""
    completion = completion.strip().lower()
    answer = answer.strip().lower()
    return completion.startswith(answer) and not re.match(r"\w", completion[len(answer) : len(answer) + 1])


def majority_baseline(facts: list[dict]) -> float:
    """Accuracy of always answering each relation's most common answer: the bar a model must clear."""
    by_relation: dict[str, Counter] = defaultdict(Counter)
    for fact in facts:
        by_relation[fact["relation"]][fact["answer"].lower()] += 1
    hits = sum(counts.most_common(1)[0][1] for counts in by_relation.values())
    return hits / max(1, len(facts))


def fact_completion_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    facts: list[dict],
    max_new_tokens: int = 8,
    batch_size: int = 64,
    generator: Generator | None = None,
) -> dict:
    """Greedy-complete each fact's prompt after a document boundary; exact-match accuracy overall and per relation."""
    if not facts:
        raise RecipeError("no facts to evaluate")
    greedy = SamplingArguments(max_new_tokens=max_new_tokens, temperature=0.0, num_samples=1)
    generator = generator or HFGenerator(model, tokenizer, batch_size)
    completions = generator([f["prompt"] for f in facts], greedy, prefix_token_ids=[tokenizer.eos_token_id])
    per_relation: dict[str, list[bool]] = defaultdict(list)
    examples = []
    for fact, (completion,) in zip(facts, completions):
        ok = completion_matches(completion, fact["answer"])
        per_relation[fact["relation"]].append(ok)
        if len(examples) < 5:
            examples.append({"prompt": fact["prompt"], "answer": fact["answer"], "completion": completion, "ok": ok})
    hits = [ok for oks in per_relation.values() for ok in oks]
    return {
        "accuracy": sum(hits) / len(hits),
        "baseline": majority_baseline(facts),
        "num_facts": len(hits),
        "per_relation": {rel: sum(oks) / len(oks) for rel, oks in sorted(per_relation.items())},
        "examples": examples,
    }
