"""Recipe arguments of the web data pipeline (`scripts/run_data.py recipes/data_web.yaml`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.configs import RecipeError

INPUT_FORMATS = ("warc", "wet", "html", "jsonl", "parquet")
EXECUTORS = ("local", "slurm", "ray")
OUTPUT_FORMATS = ("parquet", "jsonl")
# Input formats whose documents are raw HTML and need text extraction.
HTML_FORMATS = ("warc", "html")
# Default file patterns per input format (relative to `input`, recursive).
GLOBS = {
    "warc": "**/*.warc*",
    "wet": "**/*.wet*",
    "html": "**/*.htm*",
    "jsonl": "**/*.jsonl*",
    "parquet": "**/*.parquet",
}


@dataclass
class WebDataArguments:
    """Arguments of the FineWeb-style pipeline: where the crawl is, which steps run, where the corpus goes."""

    source: str = field(default="web", metadata={"help": "Must be 'web' for this pipeline."})
    input: str = field(
        default="data/world/crawl",
        metadata={"help": "Folder (or single file) of crawl data; local path or any fsspec URL (s3://...)."},
    )
    input_format: str = field(default="warc", metadata={"help": f"One of: {', '.join(INPUT_FORMATS)}."})
    glob_pattern: str | None = field(
        default=None, metadata={"help": "Files to read under `input` (default: by input_format, e.g. **/*.warc*)."}
    )
    text_key: str = field(default="text", metadata={"help": "Text field of jsonl/parquet input."})
    id_key: str = field(default="id", metadata={"help": "Id field of jsonl/parquet input."})
    limit: int = field(default=-1, metadata={"help": "Read at most this many documents per task (-1: all)."})
    output_dir: str = field(
        default="data/web",
        metadata={"help": "Writes corpus/{train,validation}/, removed/<step>/, funnel.json, logs/ here."},
    )
    output_format: str = field(default="parquet", metadata={"help": f"One of: {', '.join(OUTPUT_FORMATS)}."})
    validation_fraction: float = field(default=0.05, metadata={"help": "Share of documents in validation, [0, 1)."})

    # executors
    executor: str = field(default="local", metadata={"help": f"One of: {', '.join(EXECUTORS)}."})
    tasks: int = field(default=-1, metadata={"help": "Shards of the input processed in parallel (-1: CPU count)."})
    workers: int = field(default=-1, metadata={"help": "Local processes running tasks at once (-1: tasks)."})
    executor_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra arguments of the Slurm/Ray executor (partition, time, cpus_per_task, ...)."},
    )

    # steps
    url_filter: bool = field(default=True, metadata={"help": "Drop URLs on datatrove's and the recipe's lists."})
    blocked_domains: list[str] = field(default_factory=list, metadata={"help": "Extra domains to drop."})
    blocked_urls: list[str] = field(default_factory=list, metadata={"help": "Extra exact URLs to drop."})
    banned_url_words: list[str] = field(default_factory=list, metadata={"help": "Extra words banning a URL."})
    extractor_timeout: float = field(default=1.0, metadata={"help": "Seconds trafilatura may spend per page."})
    languages: list[str] = field(
        default_factory=lambda: ["en"],
        metadata={
            "help": "Languages to keep (ISO 639-1; 'unknown' for text pycld2 cannot tell); empty: no language ID."
        },
    )
    language_threshold: float = field(
        default=0.65, metadata={"help": "Least share of the text in a kept language (pycld2), in [0, 1]."}
    )
    gopher_repetition: bool = field(default=True, metadata={"help": "Gopher repetition filter."})
    gopher_quality: bool = field(default=True, metadata={"help": "Gopher quality filter."})
    c4_quality: bool = field(default=True, metadata={"help": "C4 quality filter (as FineWeb: keeps lines w/o dot)."})
    fineweb_quality: bool = field(default=True, metadata={"help": "FineWeb quality filter."})
    gopher_repetition_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Thresholds for GopherRepetitionFilter (e.g. top_n_grams); default: its own."}
    )
    gopher_quality_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Thresholds for GopherQualityFilter (e.g. min_doc_words: 10)."}
    )
    c4_quality_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Thresholds for C4QualityFilter (e.g. min_num_sentences: 2)."}
    )
    fineweb_quality_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Thresholds for FineWebQualityFilter (e.g. line_punct_thr)."}
    )
    extractor_deduplicate: bool = field(
        default=False,
        metadata={
            "help": "trafilatura's own deduplication: drops a paragraph seen 4+ times before in the same worker, "
            "so the output depends on reading order and worker count (off: MinHash does dedup)."
        },
    )
    minhash: bool = field(default=True, metadata={"help": "MinHash near-duplicate removal (4 stages)."})
    minhash_ngrams: int = field(default=5, metadata={"help": "Word n-gram size of the MinHash shingles."})
    minhash_buckets: int = field(default=14, metadata={"help": "LSH bands."})
    minhash_hashes_per_bucket: int = field(default=8, metadata={"help": "Hashes per LSH band."})
    pii: bool = field(default=True, metadata={"help": "Replace email and IP addresses."})
    only_public_ips: bool = field(default=True, metadata={"help": "Leave private/reserved IP addresses alone."})

    # measurement
    labels: str | None = field(
        default=None,
        metadata={"help": "labels.jsonl of a simulated crawl (kind of each URL): score every step against it."},
    )

    def __post_init__(self) -> None:
        for name in ("glob_pattern", "labels"):
            if getattr(self, name) in ("", "null", "None"):
                setattr(self, name, None)
        for name in KWARGS_FIELDS:
            setattr(self, name, as_mapping(name, getattr(self, name)))

    def validate(self) -> None:
        """Check every setting before any work; raise RecipeError naming the field and what was expected."""
        if self.source != "web":
            raise RecipeError(f"source must be 'web' for the web pipeline, got {self.source!r}")
        _one_of("input_format", self.input_format, INPUT_FORMATS)
        _one_of("output_format", self.output_format, OUTPUT_FORMATS)
        _one_of("executor", self.executor, EXECUTORS)
        if "://" not in self.input and not Path(self.input).exists():
            hint = (
                "; build the simulated crawl with `python scripts/run_data.py recipes/data.yaml`"
                if "crawl" in self.input
                else ""
            )
            raise RecipeError(f"input not found: {self.input}{hint}")
        if "://" not in self.input and Path(self.input).is_dir():
            pattern = self.glob_pattern or GLOBS[self.input_format]
            if not any(p.is_file() for p in Path(self.input).glob(pattern)):
                raise RecipeError(
                    f"input {self.input} has no files matching {pattern!r} (input_format {self.input_format}); "
                    "set glob_pattern or input_format"
                )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise RecipeError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not 0.0 <= self.language_threshold <= 1.0:
            raise RecipeError(f"language_threshold must be in [0, 1], got {self.language_threshold}")
        bad = [c for c in self.languages if not (isinstance(c, str) and (2 <= len(c) <= 3 or c == "unknown"))]
        if bad:
            raise RecipeError(f"languages: {bad[0]!r} is not an ISO 639-1 code such as 'en'")
        for name in ("minhash_ngrams", "minhash_buckets", "minhash_hashes_per_bucket"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tasks == 0 or self.tasks < -1 or self.workers == 0 or self.workers < -1:
            raise RecipeError(f"tasks and workers must be >= 1 or -1 (all cores), got {self.tasks}, {self.workers}")
        if self.extractor_timeout <= 0:
            raise RecipeError(f"extractor_timeout must be > 0 seconds, got {self.extractor_timeout}")
        if self.labels is not None and not Path(self.labels).is_file():
            raise RecipeError(f"labels file not found: {self.labels}")

    @property
    def num_tasks(self) -> int:
        return (os.cpu_count() or 1) if self.tasks == -1 else self.tasks

    @property
    def num_workers(self) -> int:
        return self.num_tasks if self.workers == -1 else min(self.workers, self.num_tasks)

    @property
    def extracts_html(self) -> bool:
        return self.input_format in HTML_FORMATS


KWARGS_FIELDS = (
    "executor_kwargs",
    "gopher_repetition_kwargs",
    "gopher_quality_kwargs",
    "c4_quality_kwargs",
    "fineweb_quality_kwargs",
)


def as_mapping(name: str, value: dict | str | None) -> dict:
    """A mapping field given in YAML (a dict) or on the command line (a JSON string); empty when unset."""
    if value in (None, "", "null", "None"):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RecipeError(f"{name} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise RecipeError(f"{name} must be a mapping (key: value), got {type(value).__name__}")
    return value


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RecipeError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
