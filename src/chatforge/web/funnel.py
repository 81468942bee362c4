"""The pipeline's funnel: documents, characters and tokens in and out of every step, and why documents left.

Built from the stats.json files datatrove writes per stage, so it also describes runs on Slurm or Ray.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatforge.plots import plot_funnel
from chatforge.web.pipeline import load_stage_stats

STAGES = ("filter", "minhash_signatures", "minhash_buckets", "minhash_clusters", "output")
CHARS_PER_TOKEN = 4.0  # the funnel's token estimate (the tokenizer is trained on this corpus, later)
# Scores against a simulated crawl's labels (chatforge.web.scoring), in the order shown.
SCORE_NAMES = (
    ("good_kept", "good pages kept"),
    ("blocked_removed", "blocked URLs removed"),
    ("non_english_removed", "non-English pages removed"),
    ("spam_removed", "spam pages removed"),
    ("dedup_precision", "dedup precision"),
    ("dedup_recall", "dedup recall"),
    ("pii_removed", "planted PII removed"),
)


@dataclass
class FunnelRow:
    """One step: documents in and out, characters out, and removed documents by reason."""

    step: str
    docs_in: int
    docs_out: int
    chars_out: int
    removed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def tokens_out(self) -> int:
        return round(self.chars_out / CHARS_PER_TOKEN)


_RENAMED = {"MinHash stage 4": "MinHash dedup", "PII": "PII scrubbing"}


def _label(name: str) -> str:
    """datatrove's display name without its emoji/type prefix: "🔻 - FILTER: 👯 Gopher Repetition" -> ..."""
    text = "".join(ch for ch in name.split(":", 1)[-1] if ch.isascii()).strip()
    return _RENAMED.get(text, text)


def _total(value: Any) -> int:
    if isinstance(value, dict):
        return int(value.get("total", 0))
    return int(value or 0)


def _time(step: dict[str, Any]) -> float:
    stats = step.get("time_stats")
    return float(stats.get("total", 0.0)) if isinstance(stats, dict) else 0.0


def funnel_rows(output_dir: str | Path) -> list[FunnelRow]:
    """A row per step that reads, extracts, filters, deduplicates or writes documents, in pipeline order."""
    rows: list[FunnelRow] = []
    for stage in STAGES:
        for step in load_stage_stats(output_dir, stage):
            stats = step.get("stats", {})
            label = _label(step["name"])
            if stage != "filter" and "READER" in step["name"]:
                continue  # stages after the first re-read the filtered documents
            if "READER" in step["name"]:
                n = _total(stats.get("documents"))
                skipped = {k: _total(stats[k]) for k in ("broken_files", "bad_records", "undecodable") if k in stats}
                rows.append(FunnelRow(label, n, n, _total(stats.get("doc_len")), skipped, _time(step)))
            elif "total" in stats and ("forwarded" in stats or "dropped" in stats):
                removed = {k.removeprefix("dropped_"): int(v) for k, v in stats.items() if k.startswith("dropped_")}
                dropped = _total(stats.get("dropped"))
                if dropped and not removed:  # extractors drop pages they get no text from
                    reason = "no_text" if "EXTRAC" in step["name"] else "dropped"
                    removed = {"duplicate" if "DEDUP" in step["name"] else reason: dropped}
                docs_out = _total(stats.get("forwarded"))
                chars = _total(stats.get("doc_len")) if "doc_len" in stats else (rows[-1].chars_out if rows else 0)
                rows.append(FunnelRow(label, _total(stats["total"]), docs_out, chars, removed, _time(step)))
            elif "WRITER" in step["name"] and stage == "output":
                n = _total(stats.get("total"))
                rows.append(FunnelRow(label, n, n, _total(stats.get("doc_len")), seconds=_time(step)))
            elif "FORMAT" in step["name"]:
                n = _total(stats.get("total"))
                replaced = {k: _total(v) for k, v in stats.items() if k in ("emails", "ips") and _total(v)}
                chars = rows[-1].chars_out if rows else 0
                removed = {f"{k} replaced": v for k, v in replaced.items()}
                rows.append(FunnelRow(label, n, n, chars, removed, _time(step)))
    return rows


def format_funnel(rows: list[FunnelRow]) -> str:
    """A fixed-width table: step, docs in, docs out, tokens out (est.), removed by reason."""
    header = ("step", "docs in", "docs out", "tokens out", "removed (reason: docs)")
    lines = [header] + [
        (
            row.step,
            f"{row.docs_in:,}",
            f"{row.docs_out:,}",
            f"{row.tokens_out:,}",
            _reasons(row.removed),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    out = []
    for i, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [line[j].rjust(widths[j]) for j in (1, 2, 3)] + [line[4]]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * len(header[4]))
    return "\n".join(out)


def _reasons(removed: dict[str, int], top: int = 4) -> str:
    """The `top` commonest reasons, then how many more there are."""
    ranked = sorted(removed.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k}: {v}" for k, v in ranked[:top])
    if len(ranked) > top:
        text += f", ... ({sum(v for _, v in ranked[top:])} more in {len(ranked) - top} reasons)"
    return text


def write_funnel(output_dir: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write output_dir/funnel.json (rows, plus `extra` such as label scores) and return it."""
    rows = funnel_rows(output_dir)
    record = {
        "rows": [asdict(row) | {"tokens_out": row.tokens_out} for row in rows],
        "documents_in": rows[0].docs_in if rows else 0,
        "documents_out": rows[-1].docs_out if rows else 0,
        **(extra or {}),
    }
    Path(output_dir, "funnel.json").write_text(json.dumps(record, indent=1) + "\n")
    plot_funnel(
        [row.step for row in rows],
        [row.docs_out for row in rows],
        [row.tokens_out for row in rows],
        Path(output_dir, "funnel.png"),
    )
    return record


def funnel_markdown(record: dict[str, Any]) -> list[str]:
    """funnel.json as markdown lines: the step table, then the scores against the crawl's labels (if any)."""
    lines = ["| step | docs in | docs out | tokens out (est.) | removed (reason: docs) |", "|---|---|---|---|---|"]
    for row in record.get("rows", []):
        lines.append(
            f"| {row['step']} | {row['docs_in']:,} | {row['docs_out']:,} | {row['tokens_out']:,} "
            f"| {_reasons(row.get('removed', {}))} |"
        )
    scores = record.get("scores") or {}
    shown = [(name, scores[key]) for key, name in SCORE_NAMES if isinstance(scores.get(key), (int, float))]
    if shown:
        lines += ["", "| against the crawl's labels | |", "|---|---|"]
        lines += [f"| {name} | {value:.1%} |" for name, value in shown]
    return lines
