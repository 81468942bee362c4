"""Train chatforge's byte-level BPE tokenizer and save it, with the chat template, as an HF tokenizer folder.

Usage:
    python scripts/train_tokenizer.py recipes/tokenizer.yaml
    python scripts/train_tokenizer.py recipes/tokenizer.yaml --vocab_size 4096 --output_dir outputs/tok4k
    python scripts/train_tokenizer.py recipes/tokenizer.yaml --chat_datasets none   # the corpus alone

The corpus is `datasets.load_dataset(dataset_name, dataset_config)` (a local folder of parquet/jsonl files, a
`save_to_disk` folder, or a Hub id); with `streaming: true` only the documents used are read, so a tokenizer
trains on the first characters of a Hub corpus far larger than the disk (recipes/smol-1gpu/tokenizer.yaml:
FineWeb-Edu's sample-10BT). Afterwards the folder loads with
`AutoTokenizer.from_pretrained(output_dir)`; the script prints the vocabulary size, the compression
(UTF-8 bytes per token) on the eval split, how the sample text splits into tokens, and the output path.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

from chatforge.configs import RecipeError, exit_on_user_error, parse_recipe
from chatforge.data import load_corpus
from chatforge.hub import push_folder
from chatforge.tokenizer import (
    TokenizerScriptArguments,
    _capped,
    bytes_per_token,
    chat_texts,
    check_vocab_size,
    corpus_texts,
    load_chat_template,
    load_response_template,
    resolve_response_template,
    save_tokenizer,
    show_tokens,
    train_tokenizer,
)

logger = logging.getLogger(__name__)


def _counted(texts: Iterator[str], used: dict[str, int]) -> Iterator[str]:
    """Pass `texts` through, counting documents and characters into `used`."""
    for text in texts:
        used["documents"] += 1
        used["characters"] += len(text)
        yield text


def main(args: TokenizerScriptArguments) -> None:
    """Validate the recipe, train, save, report, and optionally push."""
    check_vocab_size(args.vocab_size)
    template = load_chat_template(args.chat_template)
    response_path = resolve_response_template(args.response_template, args.chat_template)
    response_template = load_response_template(response_path) if response_path else None
    if args.push_to_hub and not args.hub_model_id:
        raise RecipeError("push_to_hub is true but hub_model_id is not set")
    splits = [args.train_split] + ([args.eval_split] if args.eval_split else [])
    optional = (args.eval_split,) if args.eval_split else ()
    corpus = load_corpus(
        args.dataset_name, splits, args.text_column, args.dataset_config, optional, streaming=args.streaming
    )
    train = corpus[args.train_split]
    evaluation = corpus.get(args.eval_split) if args.eval_split else None
    if args.eval_split and evaluation is None:
        logger.warning("no split '%s' in %s; skipping the compression report", args.eval_split, args.dataset_name)

    source = f"{args.dataset_name}" + (f" ({args.dataset_config})" if args.dataset_config else "")
    size = "streamed" if args.streaming else f"{len(train):,} documents"
    print(f"training on {source}, split '{args.train_split}' ({size})")
    used = {"documents": 0, "characters": 0}
    texts = _counted(_capped(corpus_texts(train, args.text_column), args.max_train_chars), used)
    chat_datasets = [
        d for d in args.chat_datasets if d.lower() not in ("none", "null", "[]", "")
    ]  # `none`: corpus only
    if chat_datasets:
        chats = chat_texts(chat_datasets, template, args.max_chat_chars)
        print(
            f"and on {len(chats):,} rendered conversations ({sum(map(len, chats)):,} characters) of {', '.join(chat_datasets)}"
        )
        texts = itertools.chain(texts, chats)
    tokenizer = train_tokenizer(texts, args.vocab_size, args.min_frequency, model_max_length=args.model_max_length)
    output_dir = save_tokenizer(tokenizer, args.output_dir, template, response_template)

    print(f"trained on {used['documents']:,} documents ({used['characters']:,} characters) of {source}")
    print(f"vocab size: {len(tokenizer)}")
    if evaluation is not None:
        eval_texts = list(corpus_texts(evaluation, args.text_column, args.max_eval_docs))
        ratio = bytes_per_token(tokenizer, eval_texts)
        print(f"bytes per token on '{args.eval_split}' ({len(eval_texts):,} documents): {ratio:.3f}")
    print(f"sample: {show_tokens(tokenizer, args.sample_text)}")
    print(f"saved to {output_dir}")
    if args.push_to_hub:
        # Upload the folder as saved (not tokenizer.push_to_hub, which would re-save it in the 5.x-only format).
        print(f"pushed: {push_folder(output_dir, args.hub_model_id)}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with exit_on_user_error():
        main(*parse_recipe([TokenizerScriptArguments]))
