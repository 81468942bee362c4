"""Tokenizer stage: train a byte-level BPE tokenizer, save it as an HF folder with our chat template.

The tokenizer is GPT-4 style: text is first split with the cl100k-like regex below, every piece is
mapped to bytes (so any unicode string round-trips exactly), and BPE merges are learned on those
bytes. The saved folder loads with `AutoTokenizer.from_pretrained(folder)` in transformers 5.x and 4.x.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from chatforge.configs import RecipeError, none_if_null

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

# --- Special tokens (the single source of truth; chat_templates/chatml.jinja uses the same strings) ---

ENDOFTEXT = "<|endoftext|>"  # document boundary between pretraining documents; also the eos token
PAD = "<|pad|>"  # padding only, never trained on
IM_START = "<|im_start|>"  # opens a ChatML turn: <|im_start|>{role}\n
IM_END = "<|im_end|>"  # closes a turn; generation stops here
THINK_START, THINK_END = "<think>", "</think>"  # reasoning block of an assistant turn
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"  # Hermes/Qwen-style tool call JSON
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<tool_response>", "</tool_response>"  # a tool's result
NUM_RESERVED = 4
RESERVED = tuple(f"<|reserved_{i}|>" for i in range(NUM_RESERVED))  # free slots for later stages

# Which markers are `special=True`: those that structure the sequence (boundary, padding, turn
# delimiters, reserved slots) are special, so `decode(..., skip_special_tokens=True)` gives clean text.
# The think/tool markers are *normal* added tokens (still single, never-split ids): they are part of
# the assistant's visible output, and parsers such as vLLM's hermes tool parser or a reasoning parser
# look for them in the decoded text, which skip_special_tokens=True must not strip. Qwen3 does the same.
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, PAD, IM_START, IM_END, *RESERVED)
MARKER_TOKENS: tuple[str, ...] = (
    THINK_START,
    THINK_END,
    TOOL_CALL_START,
    TOOL_CALL_END,
    TOOL_RESPONSE_START,
    TOOL_RESPONSE_END,
)
# Id order: 0..3 boundary/pad/turns, 4..9 think/tool markers, 10.. reserved slots; then the 256 bytes.
ALL_ADDED_TOKENS: tuple[str, ...] = (ENDOFTEXT, PAD, IM_START, IM_END, *MARKER_TOKENS, *RESERVED)

MIN_MERGES = 16  # the "small margin": a tokenizer with fewer merges than this is useless
MIN_VOCAB_SIZE = 256 + len(ALL_ADDED_TOKENS) + MIN_MERGES

# GPT-4 (cl100k) style split, alternatives tried left to right:
#   1. English contractions ('s 't 're 've 'm 'll 'd), case-insensitive
#   2. a run of letters, optionally preceded by one non-letter/non-digit that is not a newline (" word", "(word")
#   3. numbers in groups of at most three digits
#   4. punctuation/symbol runs, optionally after one space, swallowing trailing newlines
#   5. whitespace ending in newlines
#   6. whitespace not followed by non-space (leaves the last space to attach to the next word)
#   7. any other whitespace
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


@dataclass
class TokenizerScriptArguments:
    """Arguments of `scripts/train_tokenizer.py`."""

    dataset_name: str = field(
        default="data/world/corpus",
        metadata={
            "help": "Local dataset folder or Hub id, loaded with `datasets.load_dataset(dataset_name, dataset_config)`."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name, e.g. sample-10BT for FineWeb-Edu."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the corpus instead of downloading and loading all of it: only the documents used are "
            "read (the first max_train_chars characters of the train split, max_eval_docs of the eval split)."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the raw text."})
    train_split: str = field(default="train", metadata={"help": "Split the tokenizer is trained on."})
    eval_split: str | None = field(
        default="validation", metadata={"help": "Split used to report bytes per token (None: skip)."}
    )
    max_eval_docs: int | None = field(
        default=None, metadata={"help": "Report bytes per token on at most this many eval documents (None: all)."}
    )
    vocab_size: int = field(
        default=2048,
        metadata={"help": f"Total vocabulary: 256 bytes + merges + special tokens (>= {MIN_VOCAB_SIZE})."},
    )
    min_frequency: int = field(default=2, metadata={"help": "Minimum pair count for a merge to be learned."})
    max_train_chars: int | None = field(
        default=None, metadata={"help": "Stop feeding training text after this many characters (None: all)."}
    )
    chat_datasets: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Conversation datasets (local folders or files with `messages`, optional `tools`) rendered with "
            "the chat template and added to the training text, so role names, tool calls and JSON get merges."
        },
    )
    max_chat_chars: int | None = field(
        default=200_000, metadata={"help": "Cap on the characters of rendered conversations (None: all)."}
    )
    model_max_length: int = field(default=2048, metadata={"help": "Context length recorded in the tokenizer."})
    chat_template: str = field(
        default="chat_templates/chatml.jinja", metadata={"help": "Jinja chat template file saved with the tokenizer."}
    )
    response_template: str | None = field(
        default="auto",
        metadata={
            "help": "JSON response template saved with the tokenizer: how a reply splits back into content, "
            "thinking and tool calls (`tokenizer.parse_response`, `transformers serve`, TRL's tool calls). "
            "auto: the `<name>_response.json` beside the chat template (chatml.jinja: chatml_response.json), "
            "none if there is no such file; null: none."
        },
    )
    output_dir: str = field(default="outputs/tokenizer", metadata={"help": "Where the tokenizer folder is written."})
    sample_text: str = field(
        default="Talia Morvane walked to the old mill at 7:45, carrying 3 loaves of bread.",
        metadata={"help": "Text whose token split is printed after training."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the tokenizer to the Hub after saving."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id to push to (`user/name`)."})

    def __post_init__(self) -> None:
        none_if_null(self, "dataset_config", "eval_split", "response_template")
        for name in ("max_train_chars", "max_eval_docs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{name} must be a positive number or null, got {value}")


def check_vocab_size(vocab_size: int) -> None:
    """Raise RecipeError if `vocab_size` cannot hold the bytes, the special tokens and a few merges."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise RecipeError(
            f"vocab_size={vocab_size} is too small: the minimum is {MIN_VOCAB_SIZE} "
            f"(256 byte tokens + {len(ALL_ADDED_TOKENS)} special tokens + {MIN_MERGES} merges)"
        )


def _added_tokens() -> list[AddedToken]:
    """All added tokens in id order, with their `special` flag (see the comment at SPECIAL_TOKENS)."""
    return [
        AddedToken(
            token, special=token in SPECIAL_TOKENS, normalized=False, single_word=False, lstrip=False, rstrip=False
        )
        for token in ALL_ADDED_TOKENS
    ]


def build_backend() -> Tokenizer:
    """An untrained byte-level BPE `tokenizers.Tokenizer` with the GPT-4 style pre-tokenizer."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def corpus_texts(
    dataset: datasets.Dataset | datasets.IterableDataset, text_column: str, limit: int | None = None
) -> Iterator[str]:
    """The non-empty texts of the first `limit` documents of a dataset or stream (None: all of them)."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        texts: Iterator[str] = (row[text_column] for row in dataset.select_columns([text_column]))
    else:
        texts = iter(dataset[text_column])
    return (text for text in itertools.islice(texts, limit) if text)


def _capped(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    """Yield texts until `max_chars` characters have been yielded (the last one is truncated)."""
    total = 0
    for text in texts:
        if max_chars is not None and total + len(text) > max_chars:
            if max_chars > total:
                yield text[: max_chars - total]
            return
        total += len(text)
        yield text


def chat_texts(dataset_ids: list[str], chat_template: str, max_chars: int | None, seed: int = 0) -> list[str]:
    """Conversations of `dataset_ids` rendered with `chat_template`, shuffled together and cut at `max_chars`.

    A corpus of web-like documents has no "assistant", no `<tool_call>{"name": ...}` and little code: trained on
    it alone, a small vocabulary spells those out in single characters, and a conversation offering tools
    overflows a short context. A capped share of rendered chats gives them merges.
    """
    import random

    from transformers.utils.chat_template_utils import render_jinja_template

    from chatforge.chat_data import row_tools
    from chatforge.mixtures import MixtureDataset, load_one

    texts = []
    for dataset_id in dataset_ids:
        dataset = load_one(MixtureDataset(id=dataset_id, split="train"))
        if "messages" not in dataset.column_names:
            raise RecipeError(
                f"chat_datasets: {dataset_id} has no `messages` column (columns: {dataset.column_names})"
            )
        for row in dataset:
            rendered, _ = render_jinja_template([row["messages"]], tools=row_tools(row), chat_template=chat_template)
            texts.append(rendered[0])
    random.Random(seed).shuffle(texts)
    return list(_capped(texts, max_chars))


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    *,
    max_chars: int | None = None,
    model_max_length: int = 2048,
    show_progress: bool | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`; `vocab_size` counts bytes, merges and special tokens.

    `max_chars` caps the training text; `show_progress=None` shows the trainer's progress bar on a TTY only.
    """
    check_vocab_size(vocab_size)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    backend = build_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # Reserve ids 0..13 for the added tokens (in ALL_ADDED_TOKENS order) so they count in vocab_size.
        special_tokens=list(ALL_ADDED_TOKENS),
    )
    backend.train_from_iterator(_capped(texts, max_chars), trainer=trainer)
    # The trainer registers every token it reserved as special; rebuild the added vocabulary so the
    # think/tool markers become normal (non-special) added tokens. Ids are kept: they are in the model vocab.
    trained = build_backend()
    trained.model = backend.model
    trained.add_tokens(_added_tokens())
    logger.info("trained byte-level BPE: %d tokens (vocab_size asked: %d)", trained.get_vocab_size(), vocab_size)
    return wrap_tokenizer(trained, model_max_length=model_max_length)


def wrap_tokenizer(backend: Tokenizer, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Wrap a trained `tokenizers.Tokenizer` as a transformers tokenizer with our eos/pad and no bos."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (ENDOFTEXT, PAD)],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def load_chat_template(path: str | Path) -> str:
    """Read a Jinja chat template file, raising RecipeError if it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"chat template not found: {path}")
    return path.read_text()


def load_response_template(path: str | Path) -> dict[str, Any]:
    """Read a JSON response template (the inverse of the chat template: see chat_templates/README.md), raising
    RecipeError if it is missing, not JSON, or has no `fields`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"response template not found: {path}")
    try:
        template = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RecipeError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(template, dict) or not isinstance(template.get("fields"), dict):
        raise RecipeError(f"{path}: a response template is a JSON object with a `fields` object")
    return template


def resolve_response_template(response_template: str | None, chat_template: str | Path) -> Path | None:
    """The response template file to save: `auto` pairs it with the chat template by name, so a custom chat
    template never gets a parser written for another one."""
    if response_template != "auto":
        return Path(response_template) if response_template else None
    chat_template = Path(chat_template)
    beside = chat_template.with_name(f"{chat_template.stem}_response.json")
    return beside if beside.is_file() else None


def save_tokenizer(
    tokenizer: PreTrainedTokenizerFast,
    output_dir: str | Path,
    chat_template: str,
    response_template: dict[str, Any] | None = None,
) -> Path:
    """Save `tokenizer` with `chat_template` (the template text) and `response_template` (how replies parse back)
    to a folder loadable by transformers 5.x and 4.x."""
    output_dir = Path(output_dir)
    tokenizer.chat_template = chat_template
    if response_template is not None:
        tokenizer.response_template = response_template
    tokenizer.save_pretrained(str(output_dir))
    return make_portable(output_dir)


def make_portable(output_dir: str | Path) -> Path:
    """Rewrite a saved tokenizer's tokenizer_config.json so transformers 4.x (e.g. under lm-eval) loads it too.

    transformers 5 writes `"tokenizer_class": "TokenizersBackend"`, `extra_special_tokens` and local-only keys,
    which 4.x cannot read; we switch to the class and keys both versions understand, and keep the chat template
    both in chat_template.jinja (5.x) and inline under "chat_template" (4.x). Call after every save_pretrained.
    """
    output_dir = Path(output_dir)
    config_path = output_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    extra = config.pop("extra_special_tokens", None)
    if not isinstance(extra, list) or not extra:
        extra = config.get("additional_special_tokens") or [t for t in SPECIAL_TOKENS if t not in (ENDOFTEXT, PAD)]
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = list(extra)
    template = output_dir / "chat_template.jinja"
    if template.is_file():
        config["chat_template"] = template.read_text()
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return output_dir


def bytes_per_token(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str], batch_size: int = 1000) -> float:
    """Compression: total UTF-8 bytes of `texts` divided by their token count (no special tokens added)."""
    n_bytes = n_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_bytes, n_tokens
        if batch:
            n_bytes += sum(len(text.encode("utf-8")) for text in batch)
            n_tokens += sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
            batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    flush()
    if n_tokens == 0:
        raise ValueError("bytes_per_token needs at least one non-empty text")
    return n_bytes / n_tokens


def _byte_level_decoder() -> dict[str, int]:
    """Map each ByteLevel alphabet character back to its byte (printable bytes are themselves, the rest 256+n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in set(printable)]
    mapping.update({chr(256 + n): b for n, b in enumerate(others)})
    return mapping


_BYTE_OF = _byte_level_decoder()


def token_pieces(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    """The text of each token of `text`; a token holding part of a UTF-8 character shows as `<0xF0>`-style bytes."""
    added = set(tokenizer.get_added_vocab())
    pieces = []
    for token in tokenizer.convert_ids_to_tokens(tokenizer.encode(text, add_special_tokens=False)):
        if token in added:
            pieces.append(token)
            continue
        raw = bytes(_BYTE_OF[ch] for ch in token)
        try:
            pieces.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            pieces.append("".join(f"<0x{b:02X}>" for b in raw))
    return pieces


_COLOURS = ("\033[30;46m", "\033[30;43m", "\033[30;42m", "\033[30;45m")  # background cycles, black text
_RESET = "\033[0m"
_VISIBLE = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})  # keep the view on one line


def show_tokens(tokenizer: PreTrainedTokenizerFast, text: str, colour: bool | None = None) -> str:
    """A view of how `text` splits, e.g. `[Tal][ia][ Mor][vane]`; `colour=None` colours only on a TTY stdout."""
    pieces = [piece.translate(_VISIBLE) for piece in token_pieces(tokenizer, text)]
    if colour is None:
        colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if colour:
        return "".join(f"{_COLOURS[i % len(_COLOURS)]}{piece}{_RESET}" for i, piece in enumerate(pieces))
    return "".join(f"[{piece}]" for piece in pieces)
