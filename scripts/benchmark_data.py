"""Web pipeline speed: documents per second per core for each step, on real pages.

Usage:
    python scripts/benchmark_data.py                       # ../shared/data/web: 110 HTML pages, CC text documents
    python scripts/benchmark_data.py --output docs/benchmarks.md
    python scripts/benchmark_data.py --inputs html=path/to/pages jsonl=path/to/docs

Each input runs through the whole pipeline (datatrove's default filters; every language identified and kept, so
the quality filters see every page) with one task in one process, so each step's time is one core's. Rates come
from the time datatrove measured inside each step per document (reading, extracting, identifying, filtering,
hashing), leaving out the slowest document, which pays for one-off setup. The table is printed and, with `--output`, written into that markdown file between
`<!-- data -->` markers.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pycld2

from chatforge.configs import RecipeError, exit_on_user_error
from chatforge.report import environment, write_marked_section
from chatforge.web import WebDataArguments, build_web_corpus
from chatforge.web.pipeline import load_stage_stats

SHARED_WEB = Path(__file__).resolve().parents[2] / "shared" / "data" / "web"
DEFAULT_INPUTS = [f"html={SHARED_WEB / 'html'}", f"jsonl={SHARED_WEB / 'cc_jsonl'}"]
MARK_START, MARK_END = "<!-- data -->", "<!-- /data -->"
EVERY_LANGUAGE = sorted({code.split("-")[0] for _name, code in pycld2.LANGUAGES} | {"unknown"})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", default=DEFAULT_INPUTS, help="FORMAT=PATH pairs.")
    parser.add_argument("--output", default=None, help="Markdown file to write the table into.")
    return parser.parse_args()


def measure(input_format: str, path: str) -> list[tuple[str, int, float]]:
    """(step, documents in, seconds) for every step of one pipeline run over `path`."""
    with tempfile.TemporaryDirectory() as out:
        args = WebDataArguments(
            input=path,
            input_format=input_format,
            output_dir=out,
            tasks=1,
            workers=1,
            languages=EVERY_LANGUAGE,  # identify every page's language, keep them all
            language_threshold=0.0,
            labels=None,
        )
        build_web_corpus(args)
        rows = [_steady_rate(step) for step in load_stage_stats(out, "filter")]
        for step in load_stage_stats(out, "minhash_signatures"):
            if "DEDUP" in step["name"]:  # one timing for the whole task: documents = the step's total
                seconds = float((step.get("time_stats") or {}).get("total", 0.0))
                rows.append(("MinHash signatures", int(step["stats"].get("total", 0)), seconds))
        rows += [_steady_rate(step) for step in load_stage_stats(out, "output") if "READER" not in step["name"]]
    return [row for row in rows if row is not None]


def _steady_rate(step: dict) -> tuple[str, int, float] | None:
    """(step, documents, seconds) without the step's slowest document, which pays for one-off setup
    (blocklists, spaCy, the extractor's process); None for steps that timed nothing per document."""
    timing = step.get("time_stats")
    if not isinstance(timing, dict) or not timing.get("n") or timing["n"] < 2:
        return None
    name = "".join(ch for ch in step["name"].split(":", 1)[-1] if ch.isascii()).strip()
    if "WRITER" in step["name"]:
        name += " (write)"
    return name, int(timing["n"]) - 1, float(timing["total"]) - float(timing.get("max", 0.0))


def format_table(results: dict[str, list[tuple[str, int, float]]]) -> str:
    lines = ["| input | step | documents | seconds | documents/s per core |", "|---|---|---|---|---|"]
    for name, rows in results.items():
        for step, docs, seconds in rows:
            if not docs or seconds <= 0:
                continue
            lines.append(f"| {name} | {step} | {docs:,} | {seconds:.2f} | {docs / seconds:,.0f} |")
    return "\n".join(lines)


def write_table(path: Path, table: str) -> None:
    write_marked_section(path, MARK_START, MARK_END, "Web data pipeline: documents per second per core", table)


def main() -> None:
    args = parse_args()
    results = {}
    for item in args.inputs:
        input_format, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            raise RecipeError(f"--inputs expects FORMAT=PATH with an existing path, got {item!r}")
        results[f"{input_format}: {Path(path).name}"] = measure(input_format, path)
    env = environment()
    table = (
        f"Measured on {env['cpu']}, one task per run (one core); datatrove {env.get('datatrove', '?')}, "
        f"commit {env.get('git commit', '?')}. Rates leave out each step's slowest document (one-off setup).\n\n"
        + format_table(results)
    )
    print(table)
    if args.output:
        write_table(Path(args.output), table)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    with exit_on_user_error():
        main()
