"""Tokenize a corpus once into datatrove token shards that `run_pretrain.py` reads directly.

Usage:
    python scripts/tokenize_corpus.py recipes/web/tokenize.yaml
    python scripts/tokenize_corpus.py recipes/web/tokenize.yaml --dataset_name data/web/corpus --tasks 8
    python scripts/run_pretrain.py recipes/pretrain.yaml --dataset_name data/web/tokenized

Writes OUTPUT_DIR/<split>/*.ds (shuffled token ids, eos before each document), *.ds.index (document ends) and
OUTPUT_DIR/token_shards.json (tokenizer, token size, token counts). Pretraining on a large corpus then starts at
once instead of tokenizing it first, in every run.
"""

from __future__ import annotations

import logging

from chatforge.configs import exit_on_user_error, parse_recipe
from chatforge.web.tokenize import TokenizeArguments, tokenize_corpus


def main(args: TokenizeArguments) -> dict:
    info = tokenize_corpus(args)
    for split, count in info["tokens"].items():
        print(f"{split}: {count:,} tokens")
    print(f"wrote {args.output_dir}/{{{','.join(args.splits)}}}/*.ds and token_shards.json")
    return info


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error():
        main(*parse_recipe([TokenizeArguments]))
