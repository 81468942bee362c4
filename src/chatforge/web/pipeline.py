"""The FineWeb-style pipeline as datatrove stages: read, filter, extract, identify language, filter quality,
deduplicate with MinHash, scrub PII and write the corpus `run_pretrain.py` and `train_tokenizer.py` read.

Stages (each a datatrove executor; a rerun skips the tasks a stage already completed):
1. `filter`: reader -> URL filter -> trafilatura -> language ID -> Gopher repetition -> Gopher quality -> C4 ->
   FineWeb quality -> work/filtered/ (every filter writes what it removed, with the reason, to removed/<step>/)
2. `minhash_signatures`, `minhash_buckets`, `minhash_clusters`: near-duplicate clusters over work/filtered/
3. `output`: work/filtered/ -> MinHash filter (removed/<n>_minhash/) -> PII -> split -> corpus/{train,validation}/
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.executor.base import PipelineExecutor
from datatrove.pipeline.dedup import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.hashing import HashConfig

from chatforge.configs import RecipeError
from chatforge.web.config import GLOBS, WebDataArguments
from chatforge.web.steps import (
    HtmlFolderReader,
    OfflineURLFilter,
    Pycld2LanguageFilter,
    SplitAssigner,
    TolerantWarcReader,
)

logger = logging.getLogger(__name__)

# The filters of stage 1, in FineWeb's order, with the recipe switch of each.
FILTER_STEPS = (
    ("url", "url_filter"),
    ("language", None),
    ("gopher_repetition", "gopher_repetition"),
    ("gopher_quality", "gopher_quality"),
    ("c4_quality", "c4_quality"),
    ("fineweb_quality", "fineweb_quality"),
)


# Quality filters: recipe name, datatrove class, chatforge's defaults (C4 as in FineWeb: lines without a final
# period are kept). The recipe's `<name>_kwargs` override them.
QUALITY_FILTERS = (
    ("gopher_repetition", GopherRepetitionFilter, {}),
    ("gopher_quality", GopherQualityFilter, {}),
    ("c4_quality", C4QualityFilter, {"filter_no_terminal_punct": False}),
    ("fineweb_quality", FineWebQualityFilter, {}),
)


def check_filter_kwargs(args: WebDataArguments) -> None:
    """Every `<filter>_kwargs` key must be an argument of that datatrove filter (clear error before any work)."""
    import inspect

    for name, cls, _ in QUALITY_FILTERS:
        given = getattr(args, f"{name}_kwargs")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "exclusion_writer"}
        unknown = sorted(set(given) - accepted)
        if unknown:
            raise RecipeError(
                f"{name}_kwargs: {unknown[0]!r} is not an argument of {cls.__name__}; it takes {', '.join(sorted(accepted))}"
            )


@dataclass
class Stage:
    """One datatrove run: its name (also its logs/ folder), steps and number of tasks."""

    name: str
    steps: list
    tasks: int


class CountingPIIFormatter(PIIFormatter):
    """datatrove's PIIFormatter that also counts what it replaced (emails, IPs) for the funnel."""

    def format(self, text: str) -> str:
        if self.remove_emails:
            self.stat_update("emails", value=_count(self.emails_replacer, text))
        if self.remove_ips:
            self.stat_update("ips", value=_count(self.ip_replacer, text))
        return super().format(text)


def _count(replacer, text: str) -> int:
    matches = replacer.regex.findall(text) if replacer.validator is None else replacer.regex.finditer(text)
    if replacer.validator is None:
        return len(matches)
    return sum(1 for m in matches if replacer.validator(m.group(0)))


def _corpus_row(self, document) -> dict:
    """Corpus columns, as the synthetic world writes them: text, id, url."""
    return {"text": document.text, "id": document.id, "url": document.metadata.get("url", "")}


def _reader(args: WebDataArguments):
    glob = args.glob_pattern or GLOBS[args.input_format]
    common = {"glob_pattern": glob, "limit": args.limit}
    path = Path(args.input)
    if path.is_file():  # a single file: read its folder, just that file
        common["glob_pattern"] = path.name
        folder = str(path.parent)
    else:
        folder = args.input
    if args.input_format in ("warc", "wet"):
        return TolerantWarcReader(folder, **common)
    if args.input_format == "html":
        return HtmlFolderReader(folder, **common)
    keys = {"text_key": args.text_key, "id_key": args.id_key}
    if args.input_format == "jsonl":
        return JsonlReader(folder, **common, **keys)
    return ParquetReader(folder, **common, **keys)


def removed_dir(output_dir: str | Path, index: int, step: str) -> Path:
    return Path(output_dir) / "removed" / f"{index}_{step}"


def _excluded(args: WebDataArguments, index: int, step: str) -> JsonlWriter:
    return JsonlWriter(str(removed_dir(args.output_dir, index, step)))


def filter_steps(args: WebDataArguments) -> list:
    """Reader, extractor and filters of stage 1 (each filter with its own `removed/` writer)."""
    steps: list = [_reader(args)]
    index = 1
    if args.url_filter:
        steps.append(
            OfflineURLFilter(
                extra_domains=args.blocked_domains,
                extra_urls=args.blocked_urls,
                banned_words=args.banned_url_words,
                exclusion_writer=_excluded(args, index, "url"),
            )
        )
        index += 1
    if args.extracts_html:
        steps.append(
            Trafilatura(favour_precision=True, timeout=args.extractor_timeout, deduplicate=args.extractor_deduplicate)
        )
    if args.languages:
        steps.append(
            Pycld2LanguageFilter(
                args.languages, args.language_threshold, exclusion_writer=_excluded(args, index, "language")
            )
        )
        index += 1
    for name, cls, defaults in QUALITY_FILTERS:
        if getattr(args, name):
            kwargs = {**defaults, **getattr(args, f"{name}_kwargs")}
            steps.append(cls(**kwargs, exclusion_writer=_excluded(args, index, name)))
            index += 1
    steps.append(JsonlWriter(str(Path(args.output_dir) / "work" / "filtered")))
    return steps


def build_stages(args: WebDataArguments) -> list[Stage]:
    """Every stage the recipe asks for, in order."""
    out = Path(args.output_dir)
    filtered = str(out / "work" / "filtered")
    tasks = args.num_tasks
    stages = [Stage("filter", filter_steps(args), tasks)]
    tail: list = [JsonlReader(filtered)]
    if args.minhash:
        config = MinhashConfig(
            hash_config=HashConfig(hash_fc="sha1", precision=64),  # xxhash 4.x breaks datatrove's xxhash path
            n_grams=args.minhash_ngrams,
            num_buckets=args.minhash_buckets,
            hashes_per_bucket=args.minhash_hashes_per_bucket,
        )
        minhash = out / "work" / "minhash"
        stages += [
            Stage(
                "minhash_signatures",
                [JsonlReader(filtered), MinhashDedupSignature(str(minhash / "signatures"), config=config)],
                tasks,
            ),
            Stage(
                "minhash_buckets",
                [MinhashDedupBuckets(str(minhash / "signatures"), str(minhash / "buckets"), config=config)],
                args.minhash_buckets,
            ),
            Stage(
                "minhash_clusters",
                [MinhashDedupCluster(str(minhash / "buckets"), str(minhash / "remove_ids"), config=config)],
                1,
            ),
        ]
        n_filters = sum(1 for s in filter_steps_names(args))
        tail.append(
            MinhashDedupFilter(str(minhash / "remove_ids"), exclusion_writer=_excluded(args, n_filters + 1, "minhash"))
        )
    if args.pii:
        tail.append(CountingPIIFormatter(only_remove_public_ips=args.only_public_ips))
    tail.append(SplitAssigner(args.validation_fraction))
    writer = ParquetWriter if args.output_format == "parquet" else JsonlWriter
    suffix = "parquet" if args.output_format == "parquet" else "jsonl.gz"
    tail.append(writer(str(out / "corpus"), output_filename=f"${{split}}/${{rank}}.{suffix}", adapter=_corpus_row))
    stages.append(Stage("output", tail, tasks))
    return stages


def filter_steps_names(args: WebDataArguments) -> list[str]:
    """Names of the stage-1 filters the recipe turns on, in order (their removed/ folders are numbered so)."""
    names = []
    for name, switch in FILTER_STEPS:
        if switch is None:
            if args.languages:
                names.append(name)
        elif getattr(args, switch):
            names.append(name)
    return names


def make_executor(args: WebDataArguments, stage: Stage, depends: PipelineExecutor | None) -> PipelineExecutor:
    """A local, Slurm or Ray executor for `stage`, logging to output_dir/logs/<stage>."""
    logging_dir = str(Path(args.output_dir) / "logs" / stage.name)
    if args.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(
            stage.steps,
            tasks=stage.tasks,
            workers=min(args.num_workers, stage.tasks),
            logging_dir=logging_dir,
            depends=depends,
        )
    kwargs = dict(args.executor_kwargs)
    if args.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        kwargs.setdefault("time", "04:00:00")
        if "partition" not in kwargs:
            raise RecipeError("executor slurm needs executor_kwargs.partition (and usually time, cpus_per_task)")
        return SlurmPipelineExecutor(
            stage.steps,
            tasks=stage.tasks,
            logging_dir=logging_dir,
            job_name=f"chatforge_{stage.name}",
            depends=depends,
            **kwargs,
        )
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(stage.steps, tasks=stage.tasks, logging_dir=logging_dir, depends=depends, **kwargs)


SETTINGS_FILE = "web_settings.json"
# Settings that do not change what a run writes.
_NEUTRAL = {"executor", "tasks", "workers", "executor_kwargs", "labels", "output_dir"}


def check_same_settings(args: WebDataArguments) -> None:
    """datatrove skips the tasks an output folder already finished, so a rerun with other settings would mix
    old and new results silently. Record the settings on the first run; refuse different ones later."""
    import dataclasses

    settings = {k: v for k, v in dataclasses.asdict(args).items() if k not in _NEUTRAL}
    path = Path(args.output_dir) / SETTINGS_FILE
    if "://" in args.output_dir:
        return  # remote outputs: the cluster run's own logs are the record
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            raise RecipeError(
                f"{args.output_dir} holds a run with other settings ({', '.join(changed)}); "
                "use a new output_dir, or delete the folder to start over"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1, sort_keys=True, default=str) + "\n")


def run_pipeline(args: WebDataArguments) -> list[str]:
    """Run every stage; return the stage names. Local stages run one after another in this process."""
    args.validate()
    check_filter_kwargs(args)
    check_same_settings(args)
    stages = build_stages(args)
    executor = None
    ran = []
    for stage in stages:
        executor = make_executor(args, stage, executor)
        if args.executor != "local":
            continue
        logger.info("stage %s (%d tasks)", stage.name, stage.tasks)
        executor.run()
        executor = None  # already ran: the next stage need not wait on it
        ran.append(stage.name)
        if stage.name == "filter" and not any((Path(args.output_dir) / "work" / "filtered").glob("*")):
            logger.warning("the filters removed every document: nothing to deduplicate or write (see the funnel)")
            return ran
    if executor is not None:
        executor.run()  # Slurm/Ray: launching the last stage launches the chain it depends on
    return [stage.name for stage in stages]


def load_stage_stats(output_dir: str | Path, stage: str) -> list[dict[str, Any]]:
    """The merged stats datatrove wrote for `stage` (one entry per pipeline step), or [] if it has not run."""
    path = Path(output_dir) / "logs" / stage / "stats.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())


def step_key(name: str) -> str:
    """A datatrove step's display name as a plain key ("🌍 Language ID (pycld2)" -> "language_id_pycld2")."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
