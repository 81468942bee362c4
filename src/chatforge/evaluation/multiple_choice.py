"""Multiple-choice benchmarks scored by log-likelihood: HellaSwag, ARC and MMLU, from local files or the Hub.

Each item is a context and a few candidate continuations. The model's answer is the continuation it gives the
highest log-likelihood (`accuracy`), or the highest log-likelihood per UTF-8 byte of the continuation
(`accuracy_norm`, HellaSwag's length-normalised score). No text is generated, so a base model can be scored.

Loaders take a local path (jsonl, jsonl.gz, csv, parquet, or for MMLU a folder of `<subject>_<split>.csv`) or a
Hub dataset id in the Hub schema (`Rowan/hellaswag`, `allenai/ai2_arc`, `cais/mmlu`), and check every row before
any scoring: a bad row is one RecipeError line naming the file, the row, the field and what was expected.
"""

from __future__ import annotations

import csv
import inspect
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from datasets import Dataset, DatasetDict, Features, Value, load_dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError, root_cause
from chatforge.data import looks_local

# Local file suffixes and the `datasets` builder that reads them (a trailing compression suffix is allowed).
DATA_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# MMLU file names end with their split: `abstract_algebra_dev.csv`, `anatomy_test.csv`, ...
MMLU_FILE_SPLITS = ("dev", "val", "validation", "test", "train")
FEW_SHOT_SEPARATOR = "\n\n"


@dataclass
class MultipleChoiceItem:
    """One question: the context, the candidate continuations, the index of the right one, and its subject."""

    context: str
    choices: list[str]
    label: int
    subject: str | None = None


# ------------------------------------------------------------------------------------------------- loading


def _data_format(path: Path) -> str | None:
    """The `datasets` builder for a local data file, from its suffix (None if not a known data file)."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return DATA_FORMATS.get(suffixes[-1]) if suffixes else None


def _csv_header(path: Path) -> list[str]:
    """The column names on the first line of a CSV file."""
    with path.open(newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def _csv_options(header: list[str]) -> dict:
    """Read every CSV cell as the text it is: pandas would turn "None"/"NA" into missing values and "3" into ints."""
    return {"features": Features({name: Value("string") for name in header}), "na_filter": False}


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise RecipeError(f"limit must be a positive number of items (or None for all), got {limit}")


def _load(source: str | Path, split: str, config: str | None, what: str) -> Dataset:
    """One split of a local data file or folder, or of a Hub dataset (`config` applies to Hub ids only)."""
    name = str(source)
    path = Path(name).expanduser()
    if not path.exists():
        if looks_local(name) or _data_format(path):
            raise RecipeError(f"{what} not found: {name}")
    elif path.is_file() and _data_format(path) is None:
        raise RecipeError(
            f"{name}: unsupported {what} file; expected one of {', '.join(DATA_FORMATS)} (optionally .gz)"
        )
    progress_was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # "Generating split" bars are noise in an evaluation log
    try:
        if path.is_file():
            builder = _data_format(path)
            options = _csv_options(_csv_header(path)) if builder == "csv" else {}
            return load_dataset(builder, data_files=str(path), split="train", **options)
        if path.is_dir():
            loaded = load_dataset(str(path))
            return _pick_split(loaded, split, name)
        return load_dataset(name, config, split=split)
    except RecipeError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs the name and the cause
        raise RecipeError(f"could not load {what} '{name}': {root_cause(err)}") from None
    finally:
        if progress_was_on:
            datasets.enable_progress_bars()


def _pick_split(loaded: DatasetDict, split: str, name: str) -> Dataset:
    """`split` of a local folder's dataset, or its only split when it has just one."""
    if split in loaded:
        return loaded[split]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    raise RecipeError(f"dataset '{name}' has no split '{split}'; it has {sorted(loaded)}")


def _field(row: dict, name: str, source: str, index: int):
    """`row[name]`, or a RecipeError naming the field, the file, the row and the fields it does have."""
    value = row.get(name)
    if value is None:
        found = sorted(key for key, val in row.items() if val is not None)
        raise RecipeError(f"{source}: row {index} has no '{name}' field; found fields {found}")
    if isinstance(value, str) and not value.strip() and name not in ("label", "answer", "answerKey"):
        raise RecipeError(f"{source}: row {index} has an empty '{name}' field; expected text")
    return value


def _choice_texts(value, field: str, source: str, index: int) -> list[str]:
    """Check that a row's candidates are a list of at least two strings."""
    if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(c, str) for c in value):
        raise RecipeError(f"{source}: row {index} '{field}' must be a list of at least 2 strings, got {value!r}")
    return list(value)


def _label_index(value, num_choices: int, field: str, source: str, index: int, letters: bool = False) -> int:
    """A row's answer as an index into its choices: an int, a digit string, or (with `letters`) A, B, C, ..."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif letters and isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        value = LETTERS.index(value.strip().upper())
    expected = f"an index 0-{num_choices - 1}" + (f" or a letter A-{LETTERS[num_choices - 1]}" if letters else "")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_choices:
        raise RecipeError(
            f"{source}: row {index} '{field}' is {value!r}; expected {expected} for its {num_choices} choices"
        )
    return value


def _take(rows: Dataset, limit: int | None) -> list[dict]:
    """The first `limit` rows (all when None) as dicts."""
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return rows.to_list()


def clean_hellaswag(text: str) -> str:
    """Drop the WikiHow markup of HellaSwag text (`[title]` ends a sentence, other `[tags]` go) and double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[[^\]]*\]", "", text)
    return re.sub(r" {2,}", " ", text).strip()


def load_hellaswag(
    source: str | Path, split: str = "validation", limit: int | None = None
) -> list[MultipleChoiceItem]:
    """HellaSwag items (`ctx`, `endings`, `label`): the context, then each ending as its continuation."""
    _check_limit(limit)
    name = str(source)
    items = []
    for i, row in enumerate(_take(_load(source, split, None, "HellaSwag data"), limit)):
        context = clean_hellaswag(_field(row, "ctx", name, i))
        activity = (row.get("activity_label") or "").strip()
        if activity and not context.startswith(activity):  # the Hub's ctx leaves the activity label out
            context = f"{activity}: {context}"
        endings = _choice_texts(_field(row, "endings", name, i), "endings", name, i)
        label = _label_index(_field(row, "label", name, i), len(endings), "label", name, i)
        items.append(MultipleChoiceItem(context, [" " + clean_hellaswag(e) for e in endings], label))
    return items


def load_arc(
    source: str | Path, split: str = "test", limit: int | None = None, config: str = "ARC-Challenge"
) -> list[MultipleChoiceItem]:
    """ARC items (`question`, `choices: {text, label}`, `answerKey`) as "Question: ...\\nAnswer:" and " text"."""
    _check_limit(limit)
    name = str(source)
    items = []
    for i, row in enumerate(_take(_load(source, split, config, "ARC data"), limit)):
        question = _field(row, "question", name, i)
        choices = _field(row, "choices", name, i)
        if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
            raise RecipeError(f"{name}: row {i} 'choices' must be {{'text': [...], 'label': [...]}}, got {choices!r}")
        texts = _choice_texts(choices["text"], "choices.text", name, i)
        labels = [str(label).strip() for label in choices["label"]]
        if len(labels) != len(texts):
            raise RecipeError(f"{name}: row {i} has {len(texts)} choice texts but {len(labels)} choice labels")
        key = str(_field(row, "answerKey", name, i)).strip()
        if key not in labels:
            raise RecipeError(f"{name}: row {i} 'answerKey' is {key!r}; expected one of its choice labels {labels}")
        context = f"Question: {question.strip()}\nAnswer:"
        items.append(MultipleChoiceItem(context, [" " + t.strip() for t in texts], labels.index(key)))
    return items


def mmlu_prompt(question: str, choices: list[str]) -> str:
    """The standard MMLU prompt: the question, the lettered options, then "Answer:" (scored on " A", " B", ...)."""
    options = "".join(f"{LETTERS[i]}. {choice.strip()}\n" for i, choice in enumerate(choices))
    return f"{question.strip()}\n{options}Answer:"


def _mmlu_subject(stem: str) -> tuple[str, str | None]:
    """(subject, split) from an MMLU file name such as `high_school_biology_dev` (split None if unmarked)."""
    for split in MMLU_FILE_SPLITS:
        if stem.endswith(f"_{split}"):
            return stem[: -len(split) - 1], split
    return stem, None


def _mmlu_files(folder: Path, split: str) -> dict[str, Path]:
    """{subject: csv file} of an MMLU folder; `split` picks `<subject>_<split>.csv` when it holds several splits."""
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise RecipeError(f"{folder}: no MMLU files; expected <subject>_<split>.csv files such as anatomy_test.csv")
    by_split: dict[str | None, dict[str, Path]] = defaultdict(dict)
    for file in files:
        subject, file_split = _mmlu_subject(file.stem)
        by_split[file_split][subject] = file
    if len(by_split) == 1:
        return next(iter(by_split.values()))
    if split not in by_split:
        found = sorted(str(s) for s in by_split)
        raise RecipeError(f"{folder}: no *_{split}.csv files; it has files of the splits {found}")
    return by_split[split]


def _load_mmlu_folder(folder: Path, split: str) -> list[tuple[str, int, dict, str]]:
    """(file, row number, row, subject) for every row of an MMLU folder of CSV files, read in one `load_dataset` call."""
    files = _mmlu_files(folder, split)
    header: list[str] | None = None
    for file in files.values():
        columns = _csv_header(file)
        if "question" not in columns or "answer" not in columns or not ({"choice0", "A"} & set(columns)):
            raise RecipeError(f"{file}: expected the header question,choice0,choice1,...,answer; found {columns}")
        if header is not None and columns != header:
            raise RecipeError(f"{file}: header {columns} differs from the other files' {header}")
        header = columns
    progress_was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        data_files = {subject: str(file) for subject, file in files.items()}
        loaded = load_dataset("csv", data_files=data_files, **_csv_options(header or []))
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs the name and the cause
        raise RecipeError(f"could not load MMLU data '{folder}': {root_cause(err)}") from None
    finally:
        if progress_was_on:
            datasets.enable_progress_bars()
    return [
        (str(files[subject]), index, row, subject)
        for subject in files
        for index, row in enumerate(loaded[subject].to_list())
    ]


def _mmlu_choices(row: dict, source: str, index: int) -> list[str]:
    """A row's options: the Hub's `choices` list, or the CSV columns choice0, choice1, ... (or A, B, ...)."""
    if row.get("choices") is not None:
        return _choice_texts(row["choices"], "choices", source, index)
    for names in ([f"choice{i}" for i in range(len(LETTERS))], list(LETTERS)):
        columns = [n for n in names if row.get(n) is not None]
        while columns and not str(row[columns[-1]]).strip():  # a row may have fewer options than the header
            columns.pop()
        for column in columns:
            if not str(row[column]).strip():
                raise RecipeError(f"{source}: row {index} has an empty '{column}'; expected the option's text")
        if columns:
            return _choice_texts([str(row[n]) for n in columns], "choices", source, index)
    found = sorted(key for key, val in row.items() if val is not None)
    raise RecipeError(f"{source}: row {index} has no 'choices' (or choice0, choice1, ...) field; found fields {found}")


def load_mmlu(
    source: str | Path,
    split: str = "test",
    subjects: list[str] | None = None,
    limit: int | None = None,
    config: str = "all",
) -> list[MultipleChoiceItem]:
    """MMLU items: the standard lettered prompt, scored on the letters " A", " B", ... as continuations.

    `source` is a Hub id in the `cais/mmlu` schema (question, subject, choices, answer), a folder of
    `<subject>_<split>.csv` files with the header question,choice0,...,answer, or one such file. `subjects`
    keeps only those subjects; `limit` caps the total after that.
    """
    _check_limit(limit)
    name = str(source)
    path = Path(name).expanduser()
    if path.is_dir() and any(path.glob("*.csv")):
        rows = _load_mmlu_folder(path, split)
    else:
        file_subject = _mmlu_subject(path.stem)[0] if path.is_file() else None
        loaded = _load(source, split, config, "MMLU data").to_list()
        rows = [(name, index, row, file_subject) for index, row in enumerate(loaded)]
    items = []
    for file, index, row, file_subject in rows:
        question = _field(row, "question", file, index)
        choices = _mmlu_choices(row, file, index)
        label = _label_index(_field(row, "answer", file, index), len(choices), "answer", file, index, letters=True)
        subject = row.get("subject") or file_subject
        letters = [f" {LETTERS[j]}" for j in range(len(choices))]
        items.append(MultipleChoiceItem(mmlu_prompt(question, choices), letters, label, subject))
    if subjects is not None:
        known = sorted({item.subject for item in items if item.subject})
        unknown = sorted(set(subjects) - set(known))
        if unknown:
            raise RecipeError(f"{name}: unknown MMLU subjects {unknown}; it has {len(known)}: {', '.join(known)}")
        items = [item for item in items if item.subject in set(subjects)]
    return items[:limit] if limit is not None else items


# ------------------------------------------------------------------------------------------------- scoring


def default_prefix_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The document-boundary token a base model saw before each document: bos, or eos when there is no bos."""
    if tokenizer.bos_token_id is not None:
        return [tokenizer.bos_token_id]
    return [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]


def _check_items(items: list[MultipleChoiceItem], what: str = "item") -> None:
    for i, item in enumerate(items):
        if len(item.choices) < 2:
            raise RecipeError(f"{what} {i} has {len(item.choices)} choices; expected at least 2")
        if not 0 <= item.label < len(item.choices):
            raise RecipeError(f"{what} {i} label {item.label} is out of range for its {len(item.choices)} choices")


def _with_shots(item: MultipleChoiceItem, few_shot: list[MultipleChoiceItem]) -> str:
    """The item's context after its solved examples: those of its subject (or with none), never the item itself."""
    shots = [
        shot
        for shot in few_shot
        if shot.context != item.context
        and (shot.subject is None or item.subject is None or shot.subject == item.subject)
    ]
    solved = [shot.context + shot.choices[shot.label] for shot in shots]
    return FEW_SHOT_SEPARATOR.join([*solved, item.context])


def _split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace onto the continuation, where BPE tokenizers attach it to a word."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    items: list[MultipleChoiceItem],
    few_shot: list[MultipleChoiceItem],
    prefix: list[int],
) -> list[list[tuple[list[int], list[int]]]]:
    """Per item and choice: (context ids, continuation ids), each part tokenized on its own and concatenated."""
    pairs = [[_split_whitespace(_with_shots(item, few_shot), choice) for choice in item.choices] for item in items]
    texts = sorted({text for choices in pairs for pair in choices for text in pair})
    ids = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"]))
    encoded = []
    for i, (item, choices) in enumerate(zip(items, pairs)):
        row = []
        for j, (context, continuation) in enumerate(choices):
            if not ids[continuation]:
                raise RecipeError(f"item {i} choice {j} ({item.choices[j]!r}) has no tokens to score")
            if not prefix and not ids[context]:
                raise RecipeError(f"item {i} has an empty context and there is no prefix token to condition on")
            row.append((prefix + ids[context], ids[continuation]))
        encoded.append(row)
    return encoded


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.no_grad()
def choice_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[MultipleChoiceItem],
    batch_size: int = 32,
    few_shot: list[MultipleChoiceItem] | None = None,
    prefix_token_ids: list[int] | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> list[list[float]]:
    """Sum of log-probabilities of each choice's tokens given its context, per item and choice.

    All (item, choice) requests are batched together, longest first, right-padded with an attention mask;
    requests with the same input tokens (MMLU's one-letter answers) share one forward pass. The context is
    prefixed with `prefix_token_ids` (default: the tokenizer's document-boundary token, see
    `default_prefix_token_ids`) and truncated from the left to `max_length` (default: the model's
    max_position_embeddings).
    """
    if batch_size < 1:
        raise RecipeError(f"batch_size must be at least 1, got {batch_size}")
    _check_items(items)
    _check_items(few_shot or [], what="few-shot example")
    prefix = default_prefix_token_ids(tokenizer) if prefix_token_ids is None else list(prefix_token_ids)
    encoded = _encode(tokenizer, items, few_shot or [], prefix)
    max_length = max_length or getattr(model.config, "max_position_embeddings", None)

    # One model input per distinct token sequence; each request reads its continuation's log-probs from it.
    inputs: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = defaultdict(list)
    for i, row in enumerate(encoded):
        for j, (context, continuation) in enumerate(row):
            full = context + continuation
            if max_length is not None and len(full) > max_length + 1:
                if len(continuation) > max_length:
                    raise RecipeError(
                        f"item {i} choice {j} is {len(continuation)} tokens, over max_length {max_length}"
                    )
                full = full[-(max_length + 1) :]
            inputs[tuple(full[:-1])].append((i, j, continuation))
    order = sorted(inputs, key=len, reverse=True)  # similar lengths share a batch: little padding

    scores = [[0.0] * len(item.choices) for item in items]
    keep_supported = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="multiple choice", disable=not progress):
            batch = order[start : start + batch_size]
            width = len(batch[0])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for r, sequence in enumerate(batch):
                ids[r, : len(sequence)] = torch.tensor(sequence)
                mask[r, : len(sequence)] = 1
            # Only the positions that predict a continuation token need logits (the vocabulary can be large).
            first = min(len(seq) - max(len(req[2]) for req in inputs[seq]) for seq in batch)
            keep = width - first
            kwargs = {"logits_to_keep": keep} if keep_supported else {}
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **kwargs).logits
            log_probs = logits[:, -keep:].float().log_softmax(dim=-1).cpu()
            for r, sequence in enumerate(batch):
                for i, j, continuation in inputs[sequence]:
                    end = len(sequence) - first  # the last input position, in kept coordinates, plus one
                    positions = torch.arange(end - len(continuation), end)
                    scores[i][j] = log_probs[r, positions, torch.tensor(continuation)].sum().item()
    finally:
        model.train(was_training)
    return scores


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def score_multiple_choice(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[MultipleChoiceItem],
    batch_size: int = 32,
    few_shot: list[MultipleChoiceItem] | None = None,
    progress: bool = True,
    prefix_token_ids: list[int] | None = None,
    max_length: int | None = None,
) -> dict:
    """Accuracy of picking the most likely choice, raw and per byte, with the chance baseline and examples.

    `few_shot` items are prepended, solved, to each item's context (see `choice_log_likelihoods` for the rest).
    """
    if not items:
        raise RecipeError("no multiple-choice items to evaluate")
    scores = choice_log_likelihoods(
        model, tokenizer, items, batch_size, few_shot, prefix_token_ids, max_length, progress=progress
    )
    hits, hits_norm = [], []
    per_subject: dict[str, list[bool]] = defaultdict(list)
    examples = []
    for item, item_scores in zip(items, scores):
        per_byte = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(item_scores, item.choices)]
        prediction, prediction_norm = _argmax(item_scores), _argmax(per_byte)
        hits.append(prediction == item.label)
        hits_norm.append(prediction_norm == item.label)
        if item.subject is not None:
            per_subject[item.subject].append(prediction == item.label)
        if len(examples) < 3:
            examples.append(
                {
                    "context": item.context,
                    "choices": item.choices,
                    "label": item.label,
                    "log_likelihoods": item_scores,
                    "prediction": prediction,
                    "prediction_norm": prediction_norm,
                }
            )
    result = {
        "accuracy": sum(hits) / len(hits),
        "accuracy_norm": sum(hits_norm) / len(hits_norm),
        "num_items": len(items),
        "baseline": sum(1 / len(item.choices) for item in items) / len(items),
    }
    if per_subject:
        result["per_subject"] = {subject: sum(oks) / len(oks) for subject, oks in sorted(per_subject.items())}
    result["examples"] = examples
    return result
