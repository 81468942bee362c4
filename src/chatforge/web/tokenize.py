"""Tokenize a corpus into datatrove token shards (`.ds`) that `run_pretrain.py` reads without re-tokenizing.

Each split of the corpus (corpus/train/, corpus/validation/) becomes a folder of shuffled `.ds` files of token ids
with `.ds.index` (document ends) and `.ds.metadata` (token count, tokenizer) files. Documents are separated as
`pack_dataset` separates them: the tokenizer's eos token before each one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from chatforge.configs import RecipeError

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

    def validate(self) -> None:
        """Clear errors before any work: the corpus, its splits and the tokenizer must exist."""
        if self.input_format not in ("parquet", "jsonl"):
            raise RecipeError(f"input_format must be parquet or jsonl, got {self.input_format!r}")
        corpus = Path(self.dataset_name)
        if "://" not in self.dataset_name:
            if not corpus.is_dir():
                raise RecipeError(
                    f"corpus not found: {corpus}; build it with `python scripts/run_data.py recipes/data_web.yaml`"
                )
            for split in self.splits:
                if not _split_files(corpus, split, self.input_format):
                    raise RecipeError(f"corpus {corpus} has no {self.input_format} files for split '{split}'")
        if self.tasks < 1:
            raise RecipeError(f"tasks must be >= 1, got {self.tasks}")
        tokenizer_file(self.tokenizer_name_or_path)


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
        source = Path(args.dataset_name) / split
        reader = (
            reader_cls(str(source), text_key=args.text_column)
            if source.is_dir()
            else reader_cls(args.dataset_name, text_key=args.text_column, glob_pattern=f"{split}*")
        )
        tokenizer = DocumentTokenizer(
            str(out / split),
            tokenizer_file(args.tokenizer_name_or_path),
            shuffle_documents=args.shuffle,
            seed=args.seed,
            max_tokens_per_file=args.max_tokens_per_file,
        )
        tokenizer.post_processor = separator  # its constructor takes only an eos-after-document token
        executor = LocalPipelineExecutor(
            [reader, tokenizer], tasks=args.tasks, logging_dir=str(out / "logs" / split), skip_completed=True
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
