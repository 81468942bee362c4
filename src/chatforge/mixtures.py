"""Weighted dataset mixtures from a recipe's `dataset_mixture` mapping (local folders/files or Hub ids).

dataset_mixture:
  datasets:
    - id: data/world/sft          # a local folder or file, or a Hub dataset id
      config: null
      split: train
      columns: [messages]         # [messages, tools] for tool conversations (data/world/tools_sft); a dataset
                                  # without `tools` mixes in with nulls there
      weight: 1.0                 # < 1 subsamples, > 1 repeats (the fractional part is subsampled)
      format: messages            # or oasst_trees: OpenAssistant message trees (.jsonl[.gz]), best-ranked path
  seed: 0
  test_split_size: null           # a fraction in (0, 1) or a row count for a held-out "test" split
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatforge.configs import RecipeError

if TYPE_CHECKING:
    import datasets

DATA_HINT = "python scripts/run_data.py recipes/data.yaml"
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass
class MixtureDataset:
    """One dataset of a mixture and its weight."""

    id: str
    config: str | None = None
    split: str = "train"
    columns: list[str] | None = None
    weight: float = 1.0
    format: str = "messages"


FORMATS = ("messages", "oasst_trees")
# Columns a dataset of a mixture may lack while another has them; its rows get nulls. `tools`: the JSON tool
# schemas of a conversation, which TRL's SFTTrainer passes to the chat template (null: no tools offered).
OPTIONAL_COLUMNS = ("tools",)


@dataclass
class DatasetMixture:
    """Datasets to load, weigh, concatenate and shuffle with `seed`; optionally split off a test set."""

    datasets: list[MixtureDataset] = field(default_factory=list)
    seed: int = 0
    test_split_size: float | int | None = None


def _check_keys(mapping: dict[str, Any], cls: type, where: str) -> None:
    if not isinstance(mapping, dict):
        raise RecipeError(f"{where} must be a mapping, got {type(mapping).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        if key not in known:
            raise RecipeError(f"{where}: unknown key '{key}'; valid keys are {', '.join(known)}")


def _parse_dataset(entry: Any, index: int) -> MixtureDataset:
    where = f"dataset_mixture.datasets[{index}]"
    _check_keys(entry, MixtureDataset, where)
    if not isinstance(entry.get("id"), str) or not entry["id"]:
        raise RecipeError(f"{where}: `id` (a local path or Hub dataset id) is required")
    dataset = MixtureDataset(**entry)
    if isinstance(dataset.weight, bool) or not isinstance(dataset.weight, (int, float)) or dataset.weight < 0:
        raise RecipeError(f"{where} ({dataset.id}): weight must be a number >= 0, got {dataset.weight!r}")
    if dataset.columns is not None and (
        not isinstance(dataset.columns, list) or not all(isinstance(c, str) for c in dataset.columns)
    ):
        raise RecipeError(f"{where} ({dataset.id}): columns must be a list of column names")
    if dataset.format not in FORMATS:
        raise RecipeError(
            f"{where} ({dataset.id}): unknown format {dataset.format!r}; use one of {', '.join(FORMATS)}"
        )
    return dataset


def parse_mixture(mixture: dict[str, Any] | DatasetMixture) -> DatasetMixture:
    """Validate a `dataset_mixture` mapping and turn it into a DatasetMixture."""
    if isinstance(mixture, DatasetMixture):
        return mixture
    _check_keys(mixture, DatasetMixture, "dataset_mixture")
    entries = mixture.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise RecipeError("dataset_mixture.datasets must be a non-empty list of {id, config, split, columns, weight}")
    size = mixture.get("test_split_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0):
        raise RecipeError(f"dataset_mixture.test_split_size must be a fraction in (0, 1) or a row count, got {size!r}")
    if isinstance(size, float) and size >= 1:
        raise RecipeError(f"dataset_mixture.test_split_size as a fraction must be < 1, got {size}")
    return DatasetMixture(
        datasets=[_parse_dataset(entry, i) for i, entry in enumerate(entries)],
        seed=int(mixture.get("seed", 0)),
        test_split_size=size,
    )


def _looks_local(dataset_id: str) -> bool:
    """True for ids that can only be paths: ./x, ../x, /x, ~/x, a/b/c, or a data-file name."""
    return (
        dataset_id.startswith((".", "/", "~"))
        or dataset_id.count("/") >= 2
        or Path(dataset_id).suffix in FILE_BUILDERS
    )


def load_one(spec: MixtureDataset) -> datasets.Dataset:
    """Load one split of a local folder or file, or of a Hub dataset (converted to `messages` per its format)."""
    import datasets

    path = Path(spec.id).expanduser()
    if spec.format == "oasst_trees":
        return _load_oasst(spec, path)
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise RecipeError(f"{spec.id}: unsupported file type; use one of {', '.join(FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files={spec.split: str(path)}, split=spec.split)
    if not path.exists() and _looks_local(spec.id):
        raise RecipeError(f"dataset not found: {spec.id} (a local path); build the world's data with `{DATA_HINT}`")
    try:
        if path.is_dir():
            return datasets.load_dataset(str(path), split=spec.split)
        return datasets.load_dataset(spec.id, spec.config, split=spec.split)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "local folder" if path.is_dir() else "not a local path, and loading it from the Hub failed"
        raise RecipeError(f"could not load dataset {spec.id} split {spec.split!r} ({where}): {first}") from None


def _load_oasst(spec: MixtureDataset, path: Path) -> datasets.Dataset:
    """OpenAssistant trees from a local .jsonl[.gz] file as best-path conversations (the Hub's
    oasst1/oasst2 tables are flat messages; their tree exports are files such as
    `2023-11-05_oasst2_ready.trees.jsonl.gz`, fetched with `hf download OpenAssistant/oasst2 FILE --repo-type dataset`).
    """
    from chatforge.chat_data import load_oasst_trees

    if not path.is_file():
        raise RecipeError(
            f"{spec.id}: format oasst_trees reads a local .jsonl or .jsonl.gz file of message trees, and there is "
            "no such file (download one: hf download OpenAssistant/oasst2 2023-11-05_oasst2_ready.trees.jsonl.gz "
            "--repo-type dataset --local-dir data/oasst2)"
        )
    return load_oasst_trees(path)


def weighted_indices(size: int, weight: float, seed: str) -> list[int]:
    """Row indices giving `weight` times a dataset of `size` rows: whole copies plus a seeded random subset."""
    whole, fraction = int(weight), weight - int(weight)
    order = list(range(size))
    random.Random(seed).shuffle(order)
    return list(range(size)) * whole + sorted(order[: round(fraction * size)])


def _merge_feature(a: Any, b: Any) -> Any:
    """The union of two column types where they are structs (or lists of structs) with different fields."""
    import datasets

    # A Json column (what `datasets` infers for messages of mixed shapes, e.g. with tool calls) holds any value:
    # every struct casts to it, while it casts to no struct, whichever dataset comes first.
    if isinstance(b, datasets.Json):
        return b
    if isinstance(a, dict) and isinstance(b, dict):
        return {**a, **{k: _merge_feature(a[k], v) if k in a else v for k, v in b.items()}}
    if isinstance(a, datasets.List) and isinstance(b, datasets.List):
        return datasets.List(_merge_feature(a.feature, b.feature))
    return a


def merged_features(all_features: list[Any]) -> Any:
    """Features every part can be cast to: messages with and without optional fields (`reasoning_content`,
    `tool_calls`, ...) combine, the missing fields becoming null."""
    import datasets

    merged = dict(all_features[0])
    for features in all_features[1:]:
        for name, feature in features.items():
            merged[name] = _merge_feature(merged[name], feature) if name in merged else feature
    return datasets.Features(merged)


def fill_optional_columns(parts: list[datasets.Dataset]) -> list[datasets.Dataset]:
    """Parts that lack an optional column some other part has get it as nulls, in the same place: conversations
    with tool schemas (`tools`) mix with conversations offering none."""
    for name in OPTIONAL_COLUMNS:
        having = [part for part in parts if name in part.column_names]
        if not having or len(having) == len(parts):
            continue
        feature, order = having[0].features[name], having[0].column_names
        parts = [
            part if name in part.column_names else part.add_column(name, [None] * len(part), feature=feature)
            for part in parts
        ]
        parts = [part.select_columns(order) if set(part.column_names) == set(order) else part for part in parts]
    return parts


def load_mixture(mixture: dict[str, Any] | DatasetMixture) -> datasets.DatasetDict:
    """Load, weigh, concatenate and shuffle the mixture's datasets into a DatasetDict ("train"[, "test"])."""
    import datasets

    mixture = parse_mixture(mixture)
    parts = []
    for index, spec in enumerate(mixture.datasets):
        dataset = load_one(spec)
        if spec.columns is not None:
            missing = [c for c in spec.columns if c not in dataset.column_names]
            if missing:
                raise RecipeError(
                    f"dataset {spec.id}: no column {missing[0]!r}; it has columns: {', '.join(dataset.column_names)}"
                )
            dataset = dataset.select_columns(spec.columns)
        indices = weighted_indices(len(dataset), float(spec.weight), f"{mixture.seed}:{index}:{spec.id}")
        parts.append(dataset.select(indices))
    parts = fill_optional_columns(parts)
    features = merged_features([part.features for part in parts])
    for spec, part in zip(mixture.datasets[1:], parts[1:]):
        if part.column_names != parts[0].column_names:
            raise RecipeError(
                f"dataset {spec.id} has columns {part.column_names} but {mixture.datasets[0].id} has "
                f"{parts[0].column_names}; choose the same `columns` for every dataset of the mixture"
            )
    try:
        parts = [part if part.features == features else part.cast(features) for part in parts]
    except (ValueError, TypeError) as err:
        raise RecipeError(f"the mixture's datasets have incompatible column types: {err}") from None
    combined = datasets.concatenate_datasets(parts).shuffle(seed=mixture.seed)
    if mixture.test_split_size is None:
        return datasets.DatasetDict({"train": combined})
    if len(combined) < 2:
        raise RecipeError(f"the mixture has {len(combined)} rows, too few to split off a test set")
    return combined.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
