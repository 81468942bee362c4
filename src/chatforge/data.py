"""Text datasets for pretraining: load a corpus, tokenize it, pack it into fixed-length blocks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedTokenizerBase

from chatforge.configs import RecipeError, root_cause


def looks_local(name: str) -> bool:
    """True for names meant as a local path rather than a Hub id (`owner/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name.split("/", 1)[0]).is_dir()


def require_model(name_or_path: str | None, role: str, example: str, make_it: str) -> str:
    """The model a stage starts from must be set and, when it is a local path, exist; say how to make it."""
    if not name_or_path:
        raise RecipeError(f"model_name_or_path is not set; point it at {example}")
    if looks_local(name_or_path) and not Path(name_or_path).exists():
        raise RecipeError(f"{role} not found: {name_or_path}; {make_it}")
    return name_or_path


def load_corpus(
    name: str,
    splits: list[str],
    text_column: str = "text",
    config: str | None = None,
    optional_splits: tuple[str, ...] = (),
    hint: str = "create it with `python scripts/run_data.py recipes/data.yaml`",
    streaming: bool = False,
) -> DatasetDict | IterableDatasetDict:
    """Load `splits` of a text corpus and check each exists, is non-empty and has `text_column`.

    `name` is a local folder of parquet/jsonl files, a `save_to_disk` folder, or a Hub id. Splits listed
    in `optional_splits` are left out, not an error, when the corpus lacks them. With `streaming`, each split
    is an `IterableDataset` read as it is iterated (a Hub corpus is never downloaded whole).
    """
    path = Path(name).expanduser()
    if not path.exists() and looks_local(name):
        raise RecipeError(f"dataset not found: {name}" + (f"; {hint}" if hint else ""))
    progress_was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # "Generating split" bars are noise here, and would bury an error
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = load_from_disk(str(path))
        else:
            loaded = load_dataset(str(path) if path.exists() else name, config, streaming=streaming)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs the name and the cause
        empty = _empty_data_files(path) if path.is_dir() else []
        if empty:
            raise RecipeError(f"dataset '{name}' has empty data files: {', '.join(empty)}") from None
        raise RecipeError(f"could not load dataset '{name}': {root_cause(err)}") from None
    finally:
        if progress_was_on:
            datasets.enable_progress_bars()
    if isinstance(loaded, (Dataset, IterableDataset)):
        loaded = {"train": loaded}
    result = IterableDatasetDict() if streaming else DatasetDict()
    for split in splits:
        if split not in loaded:
            if split in optional_splits:
                continue
            raise RecipeError(f"dataset '{name}' has no split '{split}'; it has {sorted(loaded)}")
        dataset = loaded[split]
        if streaming and isinstance(dataset, Dataset):  # a save_to_disk folder is local already; stream it anyway
            dataset = dataset.to_iterable_dataset()
        columns = _columns(dataset)
        if columns is None:
            raise RecipeError(f"dataset '{name}' split '{split}' is empty")
        if text_column not in columns:
            raise RecipeError(f"dataset '{name}' split '{split}' has no column '{text_column}'; columns: {columns}")
        result[split] = dataset
    return result


def _columns(dataset: Dataset | IterableDataset) -> list[str] | None:
    """The column names of a split, or None when it has no rows. A stream whose features are unknown until read
    (JSON files) is asked for its first row."""
    if isinstance(dataset, Dataset):
        return dataset.column_names if len(dataset) else None
    if dataset.column_names is not None:
        return dataset.column_names
    first_row = next(iter(dataset), None)
    return None if first_row is None else list(first_row)


def _empty_data_files(folder: Path) -> list[str]:
    """Data files under `folder` with no rows: datasets fails on them with unhelpful messages."""
    import pyarrow.parquet as pq

    empty = []
    for file in sorted(folder.rglob("*")):
        if file.suffix not in (".parquet", ".jsonl", ".json", ".csv", ".txt") or not file.is_file():
            continue
        if file.stat().st_size == 0 or (file.suffix == ".parquet" and pq.read_metadata(file).num_rows == 0):
            empty.append(str(file.relative_to(folder)))
    return empty


def pack_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    text_column: str = "text",
    num_proc: int | None = None,
    desc: str = "packing",
) -> Dataset:
    """Tokenize documents and concatenate them into rows of exactly `block_size` token ids.

    Each document is preceded by the tokenizer's eos token (our document boundary), so the model learns
    what a document start looks like and prompts can begin with the same token. The tail that does not
    fill a whole block is dropped. Adds `num_bytes`: UTF-8 bytes of text behind each block (for bits per byte).
    """
    separator = tokenizer.eos_token_id
    if separator is None:
        raise RecipeError("the tokenizer has no eos token to separate documents")

    def pack(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        stream: list[int] = []
        total_bytes = 0
        for text, ids in zip(batch[text_column], encoded):
            stream.append(separator)
            stream.extend(ids)
            total_bytes += len(text.encode("utf-8"))
        n_blocks = len(stream) // block_size
        blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
        per_block = total_bytes * block_size / max(1, len(stream))
        return {"input_ids": blocks, "num_bytes": [per_block] * n_blocks}

    return dataset.map(
        pack,
        batched=True,
        batch_size=1000,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc=desc,
    )


def document_position_ids(input_ids: torch.Tensor, separator_id: int) -> torch.Tensor:
    """Position ids that restart at 0 on every separator token (the eos before each document).

    A block that starts inside a document counts that document's positions from 0 as well.
    """
    steps = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    starts = torch.where(input_ids == separator_id, steps, torch.zeros_like(steps))
    return steps - torch.cummax(starts, dim=-1).values


@dataclass
class BlockCollator:
    """Batch packed blocks for causal LM training: labels are the input ids (the model shifts them).

    Blocks are full, so there is no padding and no attention mask. With `document_masking`, each row also gets
    `document_position_ids`: transformers reads restarting position ids with no attention mask as packed
    sequences and lets each token attend only within its own document (a block-diagonal causal mask for sdpa,
    eager and flex attention; variable-length kernels for flash attention).
    """

    separator_id: int
    document_masking: bool = False

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features])
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if self.document_masking:
            batch["position_ids"] = document_position_ids(input_ids, self.separator_id)
        return batch
