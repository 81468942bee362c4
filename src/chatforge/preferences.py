"""Preference datasets for reward modelling, DPO and RLHF, in TRL's conversational format with an explicit prompt:

    {"prompt": [system?, user, assistant, ..., user], "chosen": [assistant], "rejected": [assistant]}

Loaders for the world's judged pairs (data/world/prefs, written by scripts/run_data.py), any JSONL file already in
this format, Anthropic HH-RLHF transcripts, OpenAssistant trees (ranked sibling replies) and the binarized
UltraFeedback. Rows that cannot be converted (no shared prompt, no final reply, empty text, identical replies)
are skipped and counted: the counts are logged and kept in `dataset.info.description`. Every loader ends with
`validate_preferences`, which names the dataset, row and field of any malformed row.

>>> load_preference_dataset({"format": "jsonl", "path": "data/world/prefs", "split": "train"})
>>> load_hh_rlhf("../shared/data/prefs/hh_rlhf_harmless_base_test.jsonl.gz")
>>> load_hh_rlhf("Anthropic/hh-rlhf", split="train", data_dir="harmless-base")
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatforge.chat_data import OASST_ROLES, _preference, _read_trees, _usable
from chatforge.configs import RecipeError, root_cause

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

Message = dict[str, str]
PairFunction = Callable[[Mapping[str, Any]], tuple[dict[str, Any] | None, str | None]]
COLUMNS = ("prompt", "chosen", "rejected")
PROMPT_ROLES = ("system", "user", "assistant")
FORMATS = ("world", "jsonl", "hh_rlhf", "oasst", "ultrafeedback")
SPEC_KEYS = ("format", "path", "name", "split", "data_dir", "lang", "rejected")
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _content_problem(message: Any, where: str) -> str | None:
    if not isinstance(message, Mapping):
        return f"{where} is a {type(message).__name__}, not a dict with role and content"
    content = message.get("content")
    if not isinstance(content, str):
        return f"{where} content must be a string, got {type(content).__name__}"
    if not content.strip():
        return f"{where} has empty content"
    return None


def prompt_problem(prompt: Any) -> str | None:
    """What is wrong with a `prompt` (None if it is a valid one): a non-empty message list ending with a user turn,
    an optional system message first, then user and assistant turns alternating."""
    if not isinstance(prompt, Sequence) or isinstance(prompt, (str, bytes)) or not prompt:
        got = "an empty list" if isinstance(prompt, Sequence) and not prompt else type(prompt).__name__
        return f"`prompt` must be a non-empty list of messages, got {got}"
    expected = "user"
    for index, message in enumerate(prompt):
        where = f"`prompt` message {index}"
        problem = _content_problem(message, where)
        if problem:
            return problem
        role = message.get("role")
        if role not in PROMPT_ROLES:
            return f"{where} has role {role!r}; valid roles are {', '.join(PROMPT_ROLES)}"
        if role == "system":
            if index != 0:
                return f"{where} is a system message; a system message may only come first"
            continue
        if role != expected:
            return f"{where} is a {role} message where a {expected} turn was due; user and assistant must alternate"
        expected = "assistant" if role == "user" else "user"
    if prompt[-1].get("role") != "user":
        return f"`prompt` ends with a {prompt[-1].get('role')} message; it must end with a user message"
    return None


def reply_problem(reply: Any, field: str) -> str | None:
    """What is wrong with a `chosen`/`rejected` value: it must be a non-empty list of assistant messages."""
    if not isinstance(reply, Sequence) or isinstance(reply, (str, bytes)) or not reply:
        got = "an empty list" if isinstance(reply, Sequence) and not reply else type(reply).__name__
        return f"`{field}` must be a list of assistant messages, got {got}"
    for index, message in enumerate(reply):
        where = f"`{field}` message {index}"
        problem = _content_problem(message, where)
        if problem:
            return problem
        if message.get("role") != "assistant":
            return f"{where} has role {message.get('role')!r}; `{field}` must hold assistant messages only"
    return None


def row_problem(row: Mapping[str, Any]) -> str | None:
    """What is wrong with one preference row, or None."""
    problem = prompt_problem(row["prompt"]) or reply_problem(row["chosen"], "chosen")
    problem = problem or reply_problem(row["rejected"], "rejected")
    if problem is None and _texts(row["chosen"]) == _texts(row["rejected"]):
        problem = "`chosen` and `rejected` are the same reply"
    return problem


def _texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(m.get("content", "")).strip() for m in messages]


def validate_preferences(dataset: Any, name: str, max_rows_checked: int | None = None) -> int:
    """Check that the rows (or the first `max_rows_checked`) are preference pairs in the explicit-prompt format.

    `dataset` is a `datasets.Dataset` or a list of row dicts. Raises RecipeError naming the dataset, the row and
    the field; returns the number of rows checked.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise RecipeError(
                f"{name}: no `{missing[0]}` column; preference data needs {', '.join(COLUMNS)}, "
                f"the dataset has: {', '.join(columns) or '(none)'}"
            )
    limit = len(dataset) if max_rows_checked is None else min(len(dataset), max_rows_checked)
    rows = dataset.select_columns(list(COLUMNS)).select(range(limit)) if columns is not None else dataset[:limit]
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise RecipeError(f"{name}: row {index} is a {type(row).__name__}, not a dict")
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise RecipeError(f"{name}: row {index} has no `{missing[0]}` field (it has: {', '.join(row)})")
        problem = row_problem(row)
        if problem:
            raise RecipeError(f"{name}: row {index}: {problem}")
    return limit


# ---------------------------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .jsonl.gz file; RecipeError naming the line of invalid JSON."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"preference file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RecipeError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
    return rows


def _load_rows(source: str, split: str, data_dir: str | None = None) -> Iterable[Mapping[str, Any]]:
    """Rows of a local .jsonl[.gz] file, or of a split of a local folder or Hub dataset (via datasets)."""
    import datasets

    from chatforge.data import looks_local

    path = Path(source).expanduser()
    if path.is_file():
        return read_jsonl(path) if ".jsonl" in path.suffixes else _load_file(path, split)
    if not path.exists() and looks_local(source):
        raise RecipeError(f"preference dataset not found: {source}")
    try:
        return datasets.load_dataset(str(path) if path.exists() else source, data_dir=data_dir, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs the name and the cause
        raise RecipeError(f"could not load preference dataset '{source}' split '{split}': {root_cause(err)}") from None


def _load_file(path: Path, split: str) -> datasets.Dataset:
    import datasets

    builder = {".parquet": "parquet", ".json": "json", ".csv": "csv"}.get(path.suffix)
    if builder is None:
        raise RecipeError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz, .json, .parquet or .csv")
    return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)


def _to_dataset(rows: list[dict[str, Any]], description: str) -> datasets.Dataset:
    import datasets

    info = datasets.DatasetInfo(description=description)
    if not rows:
        return datasets.Dataset.from_dict({c: [] for c in COLUMNS}, info=info)
    return datasets.Dataset.from_list(rows, info=info)


def _report(name: str, kept: int, skipped: Counter) -> str:
    """One line: how many pairs were kept and why the others were skipped (logged, and kept as the description)."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in skipped.most_common())
    line = f"{name}: {kept} pairs; skipped {sum(skipped.values())}" + (f" ({reasons})" if reasons else "")
    logger.info(line)
    return line


def _final_reply_problem(chosen: list[Message] | None, rejected: list[Message] | None) -> str | None:
    """Why two full conversations do not form a pair (same turns, then one assistant reply each), or None."""
    if chosen is None or rejected is None:
        return "unparsable"
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return "no_final_reply"
    if chosen[:-1] != rejected[:-1]:
        return "different_prefix"
    return None


def _pair(prompt: list[Message], chosen: Message, rejected: Message) -> tuple[dict[str, Any] | None, str | None]:
    """A pair row, or (None, why it is unusable)."""
    if not chosen["content"].strip() or not rejected["content"].strip():
        return None, "empty_reply"
    if prompt_problem(prompt) is not None:
        return None, "bad_turns"
    if chosen["content"].strip() == rejected["content"].strip():
        return None, "same_reply"
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}, None


def _convert(rows: Iterable[Mapping[str, Any]], to_pair: PairFunction) -> tuple[list[dict[str, Any]], Counter]:
    """The rows `to_pair` turns into pairs, and a count of the others by the reason it gives."""
    pairs, skipped = [], Counter()
    for row in rows:
        pair, reason = to_pair(row)
        if pair is None:
            skipped[reason] += 1
        else:
            pairs.append(pair)
    return pairs, skipped


# ---------------------------------------------------------------------------------------------------------------
# Anthropic HH-RLHF
# ---------------------------------------------------------------------------------------------------------------


def parse_hh_transcript(text: Any) -> list[Message] | None:
    """ "\\n\\nHuman: ...\\n\\nAssistant: ..." as user/assistant messages; None when it is not such a transcript."""
    if not isinstance(text, str):
        return None
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    return [{"role": HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def hh_rlhf_pair(row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """One HH-RLHF row as a pair: the shared conversation is the prompt, the final assistant turns the replies."""
    chosen, rejected = parse_hh_transcript(row.get("chosen")), parse_hh_transcript(row.get("rejected"))
    reason = _final_reply_problem(chosen, rejected)
    if reason:
        return None, reason
    return _pair(chosen[:-1], chosen[-1], rejected[-1])


def convert_hh_rlhf(rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
    """The usable pairs of HH-RLHF rows and a count of the skipped ones by reason."""
    return _convert(rows, hh_rlhf_pair)


def load_hh_rlhf(
    path_or_name: str = "Anthropic/hh-rlhf", split: str = "test", data_dir: str | None = None
) -> datasets.Dataset:
    """Anthropic HH-RLHF as explicit-prompt pairs, from a local .jsonl[.gz] file (`split` unused) or the Hub
    (`load_hh_rlhf("Anthropic/hh-rlhf", "train", data_dir="harmless-base")`). Skipped rows are counted in
    `dataset.info.description`."""
    pairs, skipped = convert_hh_rlhf(_load_rows(path_or_name, split, data_dir))
    dataset = _to_dataset(pairs, _report(f"HH-RLHF {path_or_name} ({split})", len(pairs), skipped))
    validate_preferences(dataset, f"HH-RLHF {path_or_name}")
    return dataset


# ---------------------------------------------------------------------------------------------------------------
# OpenAssistant trees
# ---------------------------------------------------------------------------------------------------------------


def _message(node: Mapping[str, Any]) -> Message:
    return {"role": OASST_ROLES[node["role"]], "content": node["text"].strip()}


def _node_pairs(
    node: Mapping[str, Any], prompt: list[Message], lang: str | None, rejected: str
) -> list[dict[str, Any]]:
    """Pairs of the ranked assistant replies to one prompter node: the best against each worse (or the worst)."""
    replies = [r for r in node.get("replies") or [] if _usable(r, lang) and r.get("role") == "assistant"]
    ranked = sorted((r for r in replies if r.get("rank") is not None), key=_preference)
    if len(ranked) < 2:
        return []
    best = ranked[0]
    worse = [r for r in ranked[1:] if r["rank"] > best["rank"]]
    rows = []
    for other in worse[-1:] if rejected == "worst" else worse:
        pair, _ = _pair(prompt, _message(best), _message(other))
        if pair is not None:
            pair.update(
                prompt_id=str(node.get("message_id", "")),
                chosen_rank=int(best["rank"]),
                rejected_rank=int(other["rank"]),
                turn=sum(m["role"] == "user" for m in prompt),
            )
            rows.append(pair)
    return rows


def oasst_tree_pairs(tree: Mapping[str, Any], lang: str | None = "en", rejected: str = "each") -> list[dict]:
    """Pairs from every prompter node of one tree (the root and deeper turns), its path from the root as prompt."""
    root = tree.get("prompt", tree)
    if not _usable(root, lang) or root.get("role") != "prompter":
        return []
    rows, stack = [], [(root, [])]
    while stack:
        node, history = stack.pop()
        prompt = history + [_message(node)]
        rows += _node_pairs(node, prompt, lang, rejected)
        for reply in node.get("replies") or []:
            if not (_usable(reply, lang) and reply.get("role") == "assistant"):
                continue
            for child in reply.get("replies") or []:
                if _usable(child, lang) and child.get("role") == "prompter":
                    stack.append((child, prompt + [_message(reply)]))
    tree_id = str(tree.get("message_tree_id") or root.get("message_id", ""))
    for row in rows:
        row["tree_id"] = tree_id
    return rows


def load_oasst_pairs(
    path_or_rows: str | Path | Iterable[Mapping[str, Any]], lang: str | None = "en", rejected: str = "each"
) -> datasets.Dataset:
    """OpenAssistant message trees (.jsonl[.gz] or tree dicts) as pairs of ranked sibling replies.

    For every prompter node (first turn or deeper) with two or more usable ranked assistant replies, the prompt is
    the conversation from the root to that node, chosen the best-ranked reply (rank 0 is best) and rejected each
    worse-ranked one (`rejected="each"`, the default: more pairs, all true preferences of the rankers) or only the
    worst (`rejected="worst"`: one pair per node, the clearest). Extra columns: tree_id, prompt_id, chosen_rank,
    rejected_rank, turn (user turns in the prompt).
    """
    if rejected not in ("each", "worst"):
        raise RecipeError(f"oasst rejected must be 'each' or 'worst', got {rejected!r}")
    trees = _read_trees(Path(path_or_rows)) if isinstance(path_or_rows, (str, Path)) else list(path_or_rows)
    rows = []
    for tree in trees:
        if tree.get("tree_state", "ready_for_export") == "ready_for_export":
            rows += oasst_tree_pairs(tree, lang, rejected)
    dataset = _to_dataset(rows, _report(f"OpenAssistant ({len(trees)} trees)", len(rows), Counter()))
    validate_preferences(dataset, "OpenAssistant pairs")
    return dataset


# ---------------------------------------------------------------------------------------------------------------
# UltraFeedback (binarized)
# ---------------------------------------------------------------------------------------------------------------


def _plain(messages: Any) -> list[Message] | None:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        return None
    if not all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages):
        return None
    return [{"role": str(m.get("role")), "content": m["content"]} for m in messages]


def ultrafeedback_pair(row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """One binarized UltraFeedback row (prompt string; chosen/rejected conversations ending with the reply) as a
    pair with an explicit prompt, keeping prompt_id and the two scores."""
    chosen, rejected = _plain(row.get("chosen")), _plain(row.get("rejected"))
    reason = _final_reply_problem(chosen, rejected)
    if reason:
        return None, reason
    prompt = chosen[:-1] or [{"role": "user", "content": str(row.get("prompt") or "")}]
    pair, reason = _pair(prompt, chosen[-1], rejected[-1])
    if pair is not None:
        pair.update(
            prompt_id=str(row.get("prompt_id", "")),
            score_chosen=float(row.get("score_chosen") or 0.0),
            score_rejected=float(row.get("score_rejected") or 0.0),
        )
    return pair, reason


def convert_ultrafeedback(rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
    """The usable pairs of binarized UltraFeedback rows and a count of the skipped ones by reason."""
    return _convert(rows, ultrafeedback_pair)


def load_ultrafeedback(
    name: str = "HuggingFaceH4/ultrafeedback_binarized", split: str = "train_prefs"
) -> datasets.Dataset:
    """The binarized UltraFeedback (Hub id or local file) as explicit-prompt pairs; splits train_prefs, test_prefs."""
    pairs, skipped = convert_ultrafeedback(_load_rows(name, split))
    dataset = _to_dataset(pairs, _report(f"UltraFeedback {name} ({split})", len(pairs), skipped))
    validate_preferences(dataset, f"UltraFeedback {name}")
    return dataset


# ---------------------------------------------------------------------------------------------------------------
# One entry point for recipes
# ---------------------------------------------------------------------------------------------------------------


def _pairs_file(path: Path, split: str, world: bool) -> Path:
    """The JSONL file a `jsonl`/`world` spec names: the file itself, or `<split>.jsonl` in the folder (for a world
    data folder: in its prefs/ folder)."""
    if path.is_file():
        return path
    folders = [path / "prefs", path] if world else [path]
    for folder in folders:
        for suffix in (".jsonl", ".jsonl.gz"):
            if (folder / f"{split}{suffix}").is_file():
                return folder / f"{split}{suffix}"
    hint = (
        "; `python scripts/run_data.py recipes/data.yaml` writes data/world/prefs"
        if world or "prefs" in str(path)
        else ""
    )
    raise RecipeError(f"preference data not found: no {split}.jsonl in {path}{hint}")


def load_jsonl_pairs(path: str | Path, split: str = "train", world: bool = False) -> datasets.Dataset:
    """Pairs already in the explicit-prompt format, from a .jsonl[.gz] file or `<folder>/<split>.jsonl`."""
    file = _pairs_file(Path(path).expanduser(), split, world)
    dataset = _to_dataset(read_jsonl(file), f"{file}")
    validate_preferences(dataset, str(file))
    return dataset


def load_preference_dataset(spec: Mapping[str, Any]) -> datasets.Dataset:
    """The preference pairs a recipe names: `{"format": FORMAT, "path" or "name": ..., "split": ...}`.

    world: `path` is a world data folder (its prefs/<split>.jsonl) or the prefs folder; jsonl: a file, or a folder
    of <split>.jsonl; hh_rlhf: a local .jsonl[.gz] or a Hub id (default Anthropic/hh-rlhf; `data_dir` e.g.
    harmless-base); oasst: a tree file (`lang`, `rejected`: each|worst); ultrafeedback: a Hub id or local file
    (default HuggingFaceH4/ultrafeedback_binarized, split train_prefs). `split` defaults to train.
    """
    if not isinstance(spec, Mapping):
        raise RecipeError(f"a preference dataset spec must be a mapping with a `format`, got {spec!r}")
    unknown = [key for key in spec if key not in SPEC_KEYS]
    if unknown:
        raise RecipeError(
            f"preference dataset spec: unknown key {unknown[0]!r}; valid keys are {', '.join(SPEC_KEYS)}"
        )
    fmt, source = spec.get("format"), spec.get("path") or spec.get("name")
    if fmt not in FORMATS:
        raise RecipeError(f"preference dataset format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt in ("world", "jsonl", "oasst") and not source:
        raise RecipeError(f"a {fmt} preference dataset needs a `path`")
    if fmt in ("world", "jsonl"):
        return load_jsonl_pairs(source, spec.get("split", "train"), world=fmt == "world")
    if fmt == "hh_rlhf":
        return load_hh_rlhf(source or "Anthropic/hh-rlhf", spec.get("split", "train"), spec.get("data_dir"))
    if fmt == "oasst":
        return load_oasst_pairs(source, spec.get("lang", "en"), spec.get("rejected", "each"))
    return load_ultrafeedback(source or "HuggingFaceH4/ultrafeedback_binarized", spec.get("split", "train_prefs"))
