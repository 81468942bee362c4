"""Build a web corpus: run the pipeline, then write and print its funnel (and its scores on labelled crawls)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from chatforge.web.config import WebDataArguments
from chatforge.web.funnel import SCORE_NAMES, format_funnel, funnel_rows, write_funnel
from chatforge.web.pipeline import run_pipeline
from chatforge.web.scoring import score_run

logger = logging.getLogger(__name__)


def build_web_corpus(args: WebDataArguments) -> dict[str, Any]:
    """Run every stage, write output_dir/funnel.json, print the funnel table; return the funnel record."""
    args.validate()
    start = time.perf_counter()
    stages = run_pipeline(args)
    if args.executor != "local":
        print(f"launched {len(stages)} {args.executor} stages; logs in {Path(args.output_dir) / 'logs'}")
        return {"stages": stages}
    scores = score_run(args.output_dir, args.labels) if args.labels else None
    record = write_funnel(
        args.output_dir, {"seconds": round(time.perf_counter() - start, 1), **({"scores": scores} if scores else {})}
    )
    print(format_funnel(funnel_rows(args.output_dir)))
    if scores:
        print(format_scores(scores))
    print(f"wrote {args.output_dir}/corpus/{{train,validation}}/, removed/<step>/ (with reasons), funnel.json")
    return record


def format_scores(scores: dict[str, Any]) -> str:
    """Scores against the crawl's labels, one per line."""
    lines = ["against the crawl's labels:"]
    for key, name in SCORE_NAMES:
        value = scores.get(key)
        if value is not None:
            lines.append(f"  {name:<26} {value:6.1%}")
    return "\n".join(lines)
