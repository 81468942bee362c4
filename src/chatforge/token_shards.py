"""Read datatrove token shards (`scripts/tokenize_corpus.py`) as fixed-length blocks for the `Trainer`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from chatforge.configs import RecipeError

SHARDS_INFO = "token_shards.json"


def is_token_shards(name: str) -> bool:
    """True for a folder written by tokenize_corpus.py (it holds token_shards.json)."""
    return (Path(name) / SHARDS_INFO).is_file()


def read_shards_info(folder: str | Path) -> dict:
    return json.loads((Path(folder) / SHARDS_INFO).read_text())


class TokenBlocks(torch.utils.data.Dataset):
    """Consecutive `block_size`-token windows of one split's shards (documents already separated by eos).

    Reads through datatrove's `DatatroveFolderDataset`, which seeks and reads per item: about 10M tokens/s in
    shuffled order on one CPU core here (`scripts/benchmark_pretrain.py --token_shards`), far above the rate a
    GPU trains at. Safe in DataLoader workers (each reopens the files).
    """

    def __init__(self, folder: str | Path, block_size: int, token_size: int) -> None:
        if not any(Path(folder).rglob("*.ds")):
            raise RecipeError(f"no token shards (*.ds) in {folder}")
        self.folder, self.block_size, self.token_size = str(folder), block_size, token_size
        self._open()

    def _open(self) -> None:
        from datatrove.utils.dataset import DatatroveFolderDataset

        # datatrove windows are seq_len + 1 tokens long and do not overlap
        self.inner = DatatroveFolderDataset(self.folder, seq_len=self.block_size - 1, token_size=self.token_size)
        self.pid = os.getpid()

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if os.getpid() != self.pid:
            # A DataLoader worker forked after this process read the shards: its copies of the open files share
            # their offsets with every other worker's, so concurrent seeks would read wrong blocks. Reopen.
            self._open()
        return {"input_ids": self.inner[index]["input_ids"]}  # int64 already; BlockCollator stacks it as is


def load_token_blocks(
    folder: str | Path, splits: list[str], block_size: int, tokenizer: PreTrainedTokenizerBase
) -> dict[str, TokenBlocks]:
    """Each split as TokenBlocks; the shards must come from the same tokenizer (its vocabulary size is checked)."""
    info = read_shards_info(folder)
    if info["vocab_size"] != len(tokenizer):
        raise RecipeError(
            f"{folder} was tokenized with {info['tokenizer']} ({info['vocab_size']} tokens), not this tokenizer "
            f"({len(tokenizer)} tokens); rerun scripts/tokenize_corpus.py with it"
        )
    missing = [split for split in splits if not (Path(folder) / split).is_dir()]
    if missing:
        raise RecipeError(f"{folder} has no split '{missing[0]}'; it has {sorted(info['tokens'])}")
    return {split: TokenBlocks(Path(folder) / split, block_size, info["token_size"]) for split in splits}


def bytes_per_token(blocks: TokenBlocks, tokenizer: PreTrainedTokenizerBase, limit: int | None = None) -> float:
    """UTF-8 bytes of document text per token over the first `limit` blocks (separators excluded)."""
    n = len(blocks) if limit is None else min(len(blocks), limit)
    if n == 0:
        return 0.0
    total = sum(
        len(tokenizer.decode(blocks[i]["input_ids"].tolist(), skip_special_tokens=True).encode()) for i in range(n)
    )
    return total / (n * blocks.block_size)
