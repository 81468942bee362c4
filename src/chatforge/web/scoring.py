"""Score a pipeline run against a simulated crawl's labels: which pages it should keep, drop or deduplicate.

The simulated crawl (`chatforge.world.crawl`) labels every URL: good, exact or near duplicate (with the URL it
copies), spam, non-English or blocked, and the PII planted in it. Here each label meets what the run did.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate")


def read_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """labels.jsonl as {url: label}."""
    labels = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                labels[row["url"]] = row
    return labels


def kept_documents(output_dir: str | Path) -> dict[str, str]:
    """{url: text} of every document in output_dir/corpus (parquet or jsonl.gz)."""
    kept: dict[str, str] = {}
    for file in sorted(Path(output_dir, "corpus").rglob("*")):
        if file.suffix == ".parquet":
            table = pq.read_table(file, columns=["url", "text"]).to_pydict()
            kept.update(zip(table["url"], table["text"]))
        elif file.name.endswith(".jsonl.gz"):
            with gzip.open(file, "rt", encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    kept[row["url"]] = row["text"]
    return kept


def removed_documents(output_dir: str | Path) -> dict[str, tuple[str, str]]:
    """{url: (step, reason)} of every document a step removed (from output_dir/removed/<n>_<step>/)."""
    removed: dict[str, tuple[str, str]] = {}
    for folder in sorted(Path(output_dir, "removed").glob("*_*")):
        step = folder.name.split("_", 1)[1]
        for file in sorted(folder.glob("*.jsonl.gz")):
            with gzip.open(file, "rt", encoding="utf-8") as f:
                for line in f:
                    meta = json.loads(line).get("metadata", {})
                    removed[meta.get("url", "")] = (step, meta.get("filter_reason", step))
    return removed


def score_run(output_dir: str | Path, labels_path: str | Path) -> dict[str, Any]:
    """Per-kind outcomes, dedup precision/recall, PII left and the share of good pages kept (itself or a copy)."""
    labels = read_labels(labels_path)
    kept = kept_documents(output_dir)
    removed = removed_documents(output_dir)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for url, label in labels.items():
        outcome = "kept" if url in kept else (removed[url][0] if url in removed else "lost")
        by_kind[label["kind"]][outcome] += 1
    result: dict[str, Any] = {"outcomes": {kind: dict(counts) for kind, counts in sorted(by_kind.items())}}

    def share(kind: str, outcome_test) -> float | None:
        counts = by_kind.get(kind)
        if not counts:
            return None
        return sum(n for outcome, n in counts.items() if outcome_test(outcome)) / sum(counts.values())

    # a good page whose copy stayed in its place is kept content: MinHash keeps any one member of a group
    copies_kept = {label.get("source_url") for url, label in labels.items() if url in kept and label.get("source_url")}
    good = [url for url, label in labels.items() if label["kind"] == "good"]
    result["good_kept"] = sum(url in kept or url in copies_kept for url in good) / len(good) if good else None
    result["spam_removed"] = share("spam", lambda o: o != "kept")
    result["non_english_removed"] = share("non_english", lambda o: o != "kept")
    result["blocked_removed"] = share("blocked", lambda o: o != "kept")
    result.update(_dedup_scores(labels, kept, removed))
    result.update(_pii_scores(labels, kept))
    return result


def _dedup_scores(labels: dict, kept: dict, removed: dict) -> dict[str, Any]:
    """MinHash precision and recall over the groups (a good page and its copies) that reached dedup.

    A group whose n members all passed the filters should lose exactly n - 1 of them, whichever one stays.
    A removal is correct when another member of its group stays; removing a page with no copy is a false one.
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for url, label in labels.items():
        groups[label.get("source_url") or url].append(url)
    reached = {url for url in labels if url in kept or removed.get(url, ("",))[0] == "minhash"}
    expected = correct = wrong = 0
    for members in groups.values():
        present = [u for u in members if u in reached]
        deduped = [u for u in present if u not in kept]
        if len(present) > 1:
            expected += len(present) - 1
            correct += min(len(deduped), len(present) - 1)
            wrong += max(0, len(deduped) - (len(present) - 1))
        else:
            wrong += len(deduped)
    total = correct + wrong
    return {
        "dedup_precision": correct / total if total else None,
        "dedup_recall": correct / expected if expected else None,
        "dedup_removed": total,
        "dedup_expected": expected,
    }


def _pii_scores(labels: dict, kept: dict) -> dict[str, Any]:
    """How many planted emails/IPs reached the corpus, over those in pages that were kept."""
    planted = leaked = 0
    for url, label in labels.items():
        if url not in kept:
            continue
        for item in label.get("pii", []):
            planted += 1
            leaked += item in kept[url]
    return {
        "pii_planted_kept_pages": planted,
        "pii_leaked": leaked,
        "pii_removed": 1 - leaked / planted if planted else None,
    }
