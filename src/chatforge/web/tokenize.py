"""Tokenize a corpus into datatrove token shards (`.ds`) that `run_pretrain.py` reads without re-tokenizing.

Each split of the corpus (corpus/train/, corpus/validation/) becomes a folder of shuffled `.ds` files of token ids
with `.ds.index` (document ends) and `.ds.metadata` (token count, tokenizer) files. Documents are separated as
`pack_dataset` separates them: the tokenizer's eos token before each one.

A corpus without split folders, such as FineWeb-Edu's `sample/10BT/000_00000.parquet ...`, names each split's files
with `split_globs` (train: some files, validation: another), and `max_documents` caps a split (validation: the
first 10,000 documents of its file).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.configs import RecipeError, none_if_null, root_cause
from chatforge.web.config import as_mapping

logger = logging.getLogger(__name__)
SHARDS_INFO = "token_shards.json"  # written next to the split folders: what pretraining needs to read them


@dataclass
class TokenizeArguments:
    """Arguments of `scripts/tokenize_corpus.py`: which corpus, which tokenizer, where the shards go."""

    dataset_name: str = field(
        default="data/web/corpus", metadata={"help": "Corpus folder with one sub-folder (or file) per split."}
    )
    splits: list[str] = field(default_factory=lambda: ["train", "validation"], metadata={"help": "Splits to do."})
    input_format: str = field(default="parquet", metadata={"help": "parquet or jsonl files in each split."})
    text_column: str = field(default="text", metadata={"help": "Column holding the document text."})
    tokenizer_name_or_path: str = field(
        default="outputs/tokenizer", metadata={"help": "Tokenizer folder (with tokenizer.json) or Hub id."}
    )
    output_dir: str = field(default="data/web/tokenized", metadata={"help": "Writes <split>/*.ds here."})
    tasks: int = field(default=1, metadata={"help": "Parallel tasks (each writes its own shuffled shard)."})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle documents within each shard."})
    seed: int = field(default=42, metadata={"help": "Seed of the shuffle."})
    max_tokens_per_file: int | None = field(default=None, metadata={"help": "Split shards above this size."})
    split_globs: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "For a corpus without split folders: the glob of each split's files inside dataset_name, e.g. "
            '{"train": "00[0-2]_00000.parquet", "validation": "013_00000.parquet"} (JSON on the command line). '
            "Every split needs one, and no file may belong to two splits."
        },
    )
    max_documents: dict[str, int] | str | None = field(
        default=None,
        metadata={
            "help": 'Most documents to read per split, e.g. {"validation": 10000} (JSON on the command line); the '
            "first ones in file order. A capped split is read by one task, so the cap is exact."
        },
    )

    def __post_init__(self) -> None:
        none_if_null(self, "split_globs", "max_documents")
        self.split_globs = as_mapping("split_globs", self.split_globs) or None
        self.max_documents = as_mapping("max_documents", self.max_documents) or None

    def validate(self) -> None:
        """Clear errors before any work: the corpus, its splits and the tokenizer must exist."""
        if self.input_format not in ("parquet", "jsonl"):
            raise RecipeError(f"input_format must be parquet or jsonl, got {self.input_format!r}")
        if self.tasks < 1:
            raise RecipeError(f"tasks must be >= 1, got {self.tasks}")
        self._validate_max_documents()
        if self.split_globs is not None:
            self._validate_split_globs()
        else:
            corpus = Path(self.dataset_name)
            if "://" not in self.dataset_name:
                if not corpus.is_dir():
                    raise RecipeError(
                        f"corpus not found: {corpus}; build it with `python scripts/run_data.py recipes/data_web.yaml`"
                    )
                for split in self.splits:
                    if not _split_files(corpus, split, self.input_format):
                        raise RecipeError(f"corpus {corpus} has no {self.input_format} files for split '{split}'")
        tokenizer_file(self.tokenizer_name_or_path)

    def _validate_max_documents(self) -> None:
        for split, limit in (self.max_documents or {}).items():
            if split not in self.splits:
                raise RecipeError(f"max_documents names split '{split}', which is not in splits {self.splits}")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise RecipeError(f"max_documents['{split}'] must be a positive integer, got {limit!r}")

    def _validate_split_globs(self) -> None:
        """Each split has a glob, each glob matches files in dataset_name (listed, also on the Hub), none shared."""
        globs = self.split_globs or {}
        for split, pattern in globs.items():
            if split not in self.splits:
                raise RecipeError(f"split_globs names split '{split}', which is not in splits {self.splits}")
            if not isinstance(pattern, str) or not pattern.strip():
                raise RecipeError(f"split_globs['{split}'] must be a non-empty glob string, got {pattern!r}")
        missing = [split for split in self.splits if split not in globs]
        if missing:
            raise RecipeError(f"split_globs has no glob for split '{missing[0]}' (splits: {self.splits})")
        if "://" not in self.dataset_name and not Path(self.dataset_name).is_dir():
            raise RecipeError(f"corpus not found: {self.dataset_name} (a folder holding the files of split_globs)")
        owner: dict[str, str] = {}
        for split in self.splits:
            files = split_glob_files(self.dataset_name, globs[split])
            if not files:
                raise RecipeError(f"split_globs['{split}'] = {globs[split]!r} matches no files in {self.dataset_name}")
            for file in files:
                if file in owner:
                    raise RecipeError(
                        f"split_globs: {file} matches both '{owner[file]}' and '{split}'; a file must belong to one split"
                    )
                owner[file] = split


def split_glob_files(dataset_name: str, pattern: str) -> list[str]:
    """The files `pattern` matches inside `dataset_name` (local or any fsspec URL), as datatrove's readers list them."""
    from datatrove.io import get_datafolder

    try:
        return get_datafolder(dataset_name).list_files(glob_pattern=pattern)
    except Exception as err:  # noqa: BLE001 - fsspec backends raise many types; the user needs the cause
        raise RecipeError(f"could not list the files of {dataset_name} for split_globs: {root_cause(err)}") from None


def _split_files(corpus: Path, split: str, input_format: str) -> list[Path]:
    suffix = ".parquet" if input_format == "parquet" else ".jsonl"
    candidates = list((corpus / split).rglob(f"*{suffix}*")) if (corpus / split).is_dir() else []
    return candidates or [p for p in corpus.glob(f"{split}*{suffix}*") if p.is_file()]


def tokenizer_file(name_or_path: str) -> str:
    """The tokenizer.json datatrove loads: inside a local folder, or the Hub id itself."""
    path = Path(name_or_path)
    if path.is_dir():
        file = path / "tokenizer.json"
        if not file.is_file():
            raise RecipeError(f"{path} has no tokenizer.json; train one with `python scripts/train_tokenizer.py`")
        return str(file)
    if path.is_file():
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise RecipeError(
            f"tokenizer not found: {name_or_path}; train it with `python scripts/train_tokenizer.py "
            "recipes/tokenizer.yaml`"
        )
    return name_or_path


def tokenize_corpus(args: TokenizeArguments) -> dict:
    """Write <output_dir>/<split>/*.ds for every split and token_shards.json; return the token counts."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader, ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    args.validate()
    hf_tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    eos = hf_tokenizer.eos_token
    if eos is None:
        raise RecipeError(f"tokenizer {args.tokenizer_name_or_path} has no eos token to separate documents")
    # eos before each document, as chatforge.data.pack_dataset does (a document start looks the same everywhere)
    separator = TemplateProcessing(single=f"{eos} $A", special_tokens=[(eos, hf_tokenizer.eos_token_id)])
    reader_cls = ParquetReader if args.input_format == "parquet" else JsonlReader
    out = Path(args.output_dir)
    counts = {}
    for split in args.splits:
        limit = (args.max_documents or {}).get(split, -1)
        source = Path(args.dataset_name) / split
        if args.split_globs is not None:
            reader = reader_cls(
                args.dataset_name, text_key=args.text_column, glob_pattern=args.split_globs[split], limit=limit
            )
        elif source.is_dir():
            reader = reader_cls(str(source), text_key=args.text_column, limit=limit)
        else:
            reader = reader_cls(args.dataset_name, text_key=args.text_column, glob_pattern=f"{split}*", limit=limit)
        tokenizer = DocumentTokenizer(
            str(out / split),
            tokenizer_file(args.tokenizer_name_or_path),
            shuffle_documents=args.shuffle,
            seed=args.seed,
            max_tokens_per_file=args.max_tokens_per_file,
        )
        tokenizer.post_processor = separator  # its constructor takes only an eos-after-document token
        # datatrove's `limit` applies to each task, so a capped split is read by one task to make the cap exact
        tasks = 1 if limit != -1 else args.tasks
        executor = LocalPipelineExecutor(
            [reader, tokenizer], tasks=tasks, logging_dir=str(out / "logs" / split), skip_completed=True
        )
        executor.run()
        counts[split] = count_tokens(out / split)
        logger.info("%s: %s tokens", split, f"{counts[split]:,}")
    info = {
        "tokenizer": args.tokenizer_name_or_path,
        "vocab_size": len(hf_tokenizer),
        "token_size": token_size(len(hf_tokenizer)),
        "eos_token_id": hf_tokenizer.eos_token_id,
        "tokens": counts,
        "source": args.dataset_name,
        "split_globs": args.split_globs,
        "max_documents": args.max_documents,
    }
    (out / SHARDS_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info


def token_size(vocab_size: int) -> int:
    """Bytes per token in datatrove's shards: 2 up to 65,536 ids, else 4 (as DocumentTokenizer decides)."""
    return 2 if vocab_size <= 2**16 else 4


def count_tokens(folder: Path) -> int:
    """Tokens in a split's shards, from their .metadata files (lines: tokenizer|token size, count, human count)."""
    total = 0
    for meta in folder.rglob("*.ds.metadata"):
        lines = meta.read_text().splitlines()
        total += int(lines[1]) if len(lines) > 1 and lines[1].strip().isdigit() else 0
    return total
