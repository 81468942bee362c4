"""Write the data of the local lm-eval tasks in this folder from a chatforge world's facts table.

Every fact ("The capital of Varnbrovia is" -> "Raivgrad") becomes one item with the true answer and up to
three distractors: other answers of the same relation in the same world, so every choice is a plausible
completion and only knowledge of the world separates them. Run from the repository root after the data stage:

    python docs/lm_eval/make_world_facts.py data/world/facts.jsonl data/lm_eval

It writes `world_facts.jsonl` (facts stated in the corpus) and `world_facts_heldout.jsonl` (facts of the
held-out people, who appear in no document: a model can only guess those, so they are the chance baseline).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

NUM_CHOICES = 4
# Output file per facts-table split.
FILES = {"train": "world_facts.jsonl", "heldout": "world_facts_heldout.jsonl"}


def multiple_choice_items(
    facts: Sequence[dict[str, str]], split: str, num_choices: int = NUM_CHOICES, seed: int = 0
) -> list[dict]:
    """One item per fact of `split`: its prompt, `choices` (true answer among distractors) and the true `label`.

    Distractors are drawn from the other answers of the same relation; items are shuffled so that any
    `--limit` takes a mix of relations. The result depends only on `facts` and `seed`.
    """
    answers: dict[str, set[str]] = defaultdict(set)
    for fact in facts:
        answers[fact["relation"]].add(fact["answer"])
    rng = random.Random(seed)
    items = []
    for fact in facts:
        if fact["split"] != split:
            continue
        others = sorted(answers[fact["relation"]] - {fact["answer"]})
        if not others:
            continue
        choices = [fact["answer"], *rng.sample(others, min(num_choices - 1, len(others)))]
        rng.shuffle(choices)
        items.append(
            {
                "subject": fact["subject"],
                "relation": fact["relation"],
                "prompt": fact["prompt"],
                "answer": fact["answer"],
                "choices": choices,
                "label": choices.index(fact["answer"]),
            }
        )
    rng.shuffle(items)
    return items


def write_jsonl(rows: Iterable[dict], path: Path) -> Path:
    """Write `rows` as JSON lines to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def write_world_facts(facts: Sequence[dict[str, str]], output_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write one jsonl file per split of FILES into `output_dir`; return the paths by split."""
    output_dir = Path(output_dir)
    return {
        split: write_jsonl(multiple_choice_items(facts, split, seed=seed), output_dir / name)
        for split, name in FILES.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("facts_file", help="facts.jsonl written by scripts/run_data.py")
    parser.add_argument("output_dir", help="folder for world_facts.jsonl and world_facts_heldout.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="seed for distractors and item order")
    args = parser.parse_args(argv)
    lines = Path(args.facts_file).read_text().splitlines()
    facts = [json.loads(line) for line in lines if line.strip()]
    for split, path in write_world_facts(facts, args.output_dir, seed=args.seed).items():
        print(f"{split}: {sum(1 for _ in path.open())} items -> {path}")


if __name__ == "__main__":
    main()
