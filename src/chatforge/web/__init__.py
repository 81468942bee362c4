"""The FineWeb-style web data pipeline on datatrove: crawl in, clean deduplicated corpus out.

>>> args = WebDataArguments(input="data/world/crawl", output_dir="data/web", labels="data/world/crawl/labels.jsonl")
>>> build_web_corpus(args)  # corpus/{train,validation}/, removed/<step>/, funnel.json
"""

from chatforge.web.config import WebDataArguments
from chatforge.web.corpus import build_web_corpus
from chatforge.web.funnel import FunnelRow, format_funnel, funnel_rows
from chatforge.web.scoring import score_run

__all__ = ["FunnelRow", "WebDataArguments", "build_web_corpus", "format_funnel", "funnel_rows", "score_run"]
