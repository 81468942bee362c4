"""Math word-problem datasets (GSM8K) as plain rows: question, final answer, worked solution.

>>> data = load_gsm8k("/work/shared/data/math/gsm8k_train.jsonl")  # or "openai/gsm8k" from the Hub
>>> len(data.rows), data.skipped
>>> data.rows[0]["answer"], data.rows[0]["solution"]
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.configs import RecipeError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("question", "answer")
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_FINAL_LINE = re.compile(r"^\s*####\s*(.*?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class MathDataset:
    """Parsed rows ({"question", "answer", "solution"}) and how many source rows were skipped."""

    rows: list[dict] = field(default_factory=list)
    skipped: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)


def parse_gsm8k_answer(text: str) -> tuple[str, str] | None:
    """(final answer, solution) from a GSM8K answer field, or None when its `#### N` line is missing or not a number.

    The final answer loses thousands separators and a leading `$` ("#### $1,000" -> "1000"); the solution
    is the reasoning before the `####` line with the calculator notes (`<<48/2=24>>`) removed.
    """
    if not isinstance(text, str):
        return None
    finals = list(_FINAL_LINE.finditer(text))
    if not finals:
        return None
    last = finals[-1]
    answer = last.group(1).replace(",", "").replace(" ", "").removeprefix("$")
    if not _NUMBER.fullmatch(answer):
        return None
    solution = _CALCULATOR_NOTE.sub("", text[: last.start()]).strip()
    return answer, solution


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecipeError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise RecipeError(f"{path}: line {number} is not a JSON object")
            yield record


def _find_local_file(path: Path, split: str) -> Path:
    if path.is_file():
        return path
    for name in (f"{split}.jsonl", f"gsm8k_{split}.jsonl"):
        if (path / name).is_file():
            return path / name
    raise RecipeError(f"{path}: no {split}.jsonl or gsm8k_{split}.jsonl in this folder")


def _looks_like_path(source: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else (absolute, relative, with a suffix) is a file path."""
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or "\\" in source
        or source.endswith((".jsonl", ".json", ".parquet", ".csv"))
    )


def _hub_records(name: str, config_name: str | None, split: str) -> tuple[list[str], Iterable[dict]]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, config_name, split=split)
    except Exception as err:  # offline, unknown name, unknown split: one clear line instead of a traceback
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RecipeError(
            f"could not load the dataset '{name}' (config {config_name!r}, split {split!r}): {message}; "
            "pass a local .jsonl file instead"
        ) from None
    return list(dataset.column_names), dataset


def load_gsm8k(
    source: str | Path = "openai/gsm8k", split: str = "train", limit: int | None = None, config_name: str = "main"
) -> MathDataset:
    """GSM8K-style rows from a local .jsonl (or a folder holding `{split}.jsonl`) or from the Hub.

    `source` is read from disk when it exists, otherwise loaded with `datasets.load_dataset(source,
    config_name, split=split)`. Rows whose gold answer has no `#### N` line, or whose N is not a number,
    are skipped and counted in `.skipped` (with a warning). `limit` stops after that many parsed rows.
    """
    path = Path(source)
    if path.exists():
        file = _find_local_file(path, split)
        records: Iterable[dict] = _read_jsonl(file)
        first = next(iter(_read_jsonl(file)), None)
        columns = list(first) if first is not None else []
        label = str(file)
    elif _looks_like_path(str(source)):
        raise RecipeError(f"math data file not found: {source}")
    else:
        columns, records = _hub_records(str(source), config_name, split)
        label = f"{source} ({split})"
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise RecipeError(f"{label}: missing column '{missing[0]}'; columns found: {', '.join(columns) or 'none'}")
    if limit is not None and limit < 0:
        raise RecipeError(f"limit must be >= 0, got {limit}")

    data = MathDataset(source=label)
    for record in records:
        if limit is not None and len(data.rows) >= limit:
            break
        parsed = parse_gsm8k_answer(record.get("answer"))
        question = record.get("question")
        if parsed is None or not isinstance(question, str) or not question.strip():
            data.skipped += 1
            continue
        answer, solution = parsed
        data.rows.append({"question": question.strip(), "answer": answer, "solution": solution})
    if data.skipped:
        logger.warning("%s: skipped %d rows without a numeric `#### answer` line", label, data.skipped)
    return data


MATH_FORMATS = ("world", "gsm8k")


def load_world_math(
    source: str | Path = "data/world/math", split: str = "train", limit: int | None = None
) -> MathDataset:
    """World problems (`question`, integer `answer`) from a .jsonl file or a folder holding `{split}.jsonl`.

    Rows whose answer is not a number are skipped and counted, like GSM8K rows without `#### N`.
    """
    path = Path(source)
    if not path.exists():
        raise RecipeError(f"math data not found: {source}; `python scripts/run_data.py recipes/data.yaml` writes it")
    file = path if path.is_file() else path / f"{split}.jsonl"
    if not file.is_file():
        raise RecipeError(f"{path}: no {split}.jsonl in this folder")
    first = next(iter(_read_jsonl(file)), None)
    columns = list(first) if first is not None else []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise RecipeError(f"{file}: missing column '{missing[0]}'; columns found: {', '.join(columns) or 'none'}")
    data = MathDataset(source=str(file))
    for record in _read_jsonl(file):
        if limit is not None and len(data.rows) >= limit:
            break
        question, answer = record.get("question"), record.get("answer")
        answer = str(answer).replace(",", "").strip() if isinstance(answer, (int, float, str)) else ""
        if not isinstance(question, str) or not question.strip() or not _NUMBER.fullmatch(answer):
            data.skipped += 1
            continue
        data.rows.append({**record, "question": question.strip(), "answer": answer})
    if data.skipped:
        logger.warning("%s: skipped %d rows without a question or a numeric answer", file, data.skipped)
    return data


def load_math_problems(
    source: str | Path,
    format: str = "world",
    split: str = "train",
    limit: int | None = None,
    config_name: str = "main",
) -> MathDataset:
    """Problems with numeric gold answers: `world` (chatforge.world math files) or `gsm8k` (file or Hub id)."""
    if format == "world":
        return load_world_math(source, split, limit)
    if format == "gsm8k":
        return load_gsm8k(source, split, limit, config_name)
    raise RecipeError(f"unknown math format {format!r}; use one of {', '.join(MATH_FORMATS)}")
