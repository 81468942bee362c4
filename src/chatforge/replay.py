"""Replay: pretraining text mixed into SFT, so the chat model keeps modelling documents.

SFT on conversations alone makes the model forget how documents read (on the demo, bits per byte on held-out
documents went from 0.245 to 0.94). Mixing blocks of the pretraining corpus into the SFT data, with the loss on
every token, is the usual remedy. TRL tokenizes a dataset either as conversations (loss on the assistant's
tokens) or as plain text, never both at once, so both kinds are tokenized here into `input_ids` and
`assistant_masks` (all ones for a replay block), which `SFTTrainer` takes as they are.
"""

from __future__ import annotations

from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from chatforge.chat_data import row_tools
from chatforge.configs import RecipeError
from chatforge.data import load_corpus, pack_dataset


def tokenize_conversations(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, masks: bool = True) -> Dataset:
    """`messages` (with the row's `tools` schemas, if any) rendered with the chat template into `input_ids` and,
    with `masks`, `assistant_masks` (what TRL would do with `assistant_only_loss`)."""

    def tokenize(example: dict) -> dict:
        out = tokenizer.apply_chat_template(
            example["messages"],
            tools=row_tools(example),
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=masks,
        )
        if not masks:
            return {"input_ids": list(out["input_ids"])}
        if 1 not in out["assistant_masks"]:
            raise RecipeError("a conversation has no assistant tokens: the chat template lacks {% generation %}")
        return {"input_ids": list(out["input_ids"]), "assistant_masks": list(out["assistant_masks"])}

    return dataset.map(tokenize, remove_columns=dataset.column_names, desc="tokenizing conversations")


def replay_blocks(
    source: str,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    num_blocks: int,
    seed: int,
    text_column: str = "text",
    split: str = "train",
    masks: bool = True,
) -> Dataset:
    """`num_blocks` blocks of `block_size` tokens from the corpus `source` (documents separated by eos, as in
    pretraining), chosen at random with `seed`; with `masks`, each has an all-ones `assistant_masks` (loss on
    every token)."""
    corpus = load_corpus(source, [split], text_column)[split]
    blocks = pack_dataset(corpus, tokenizer, block_size, text_column, desc="packing replay text")
    if len(blocks) == 0:
        raise RecipeError(f"replay_dataset {source}: too little text for one block of {block_size} tokens")
    repeats = -(-num_blocks // len(blocks))  # fewer blocks than asked: repeat the corpus (several epochs)
    pool = concatenate_datasets([blocks] * repeats) if repeats > 1 else blocks
    chosen = pool.shuffle(seed=seed).select(range(num_blocks)).remove_columns("num_bytes")
    if not masks:
        return chosen
    return chosen.map(lambda row: {"assistant_masks": [1] * len(row["input_ids"])}, desc="replay masks")


def mix_in_replay(
    conversations: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    fraction: float,
    block_size: int,
    seed: int,
    text_column: str = "text",
    masks: bool = True,
) -> tuple[Dataset, int]:
    """Tokenized conversations plus replay blocks making up `fraction` of the rows, shuffled; and the block count.
    `masks`: keep the loss on the assistant's tokens of the conversations (assistant_only_loss)."""
    if not 0.0 < fraction < 1.0:
        raise RecipeError(f"replay_fraction must be in (0, 1), got {fraction}")
    num_blocks = max(1, round(len(conversations) * fraction / (1.0 - fraction)))
    blocks = replay_blocks(source, tokenizer, block_size, num_blocks, seed, text_column, masks=masks)
    chats = tokenize_conversations(conversations, tokenizer, masks=masks)
    return concatenate_datasets([chats, blocks]).shuffle(seed=seed), num_blocks
