"""Tests for the tokenizer stage: training, round trip, special tokens, saving, chat template, script."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from chatforge.configs import RecipeError, parse_recipe
from chatforge.tokenizer import (
    ALL_ADDED_TOKENS,
    ENDOFTEXT,
    MARKER_TOKENS,
    MIN_VOCAB_SIZE,
    PAD,
    SPECIAL_TOKENS,
    TokenizerScriptArguments,
    bytes_per_token,
    load_chat_template,
    save_tokenizer,
    show_tokens,
    token_pieces,
    train_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = REPO / "chat_templates" / "chatml.jinja"

WORDS = (
    "the a an of to and in on at by with from old new river mill bread baker village market road hill "
    "Talia Morvane Oskar Brenn walked ran said asked carried found lost quickly slowly before after "
    "morning evening winter summer stone bridge lantern letter window garden cat dog horse"
).split()
EXTRAS = ["it's", "don't", "we'll", "café", "naïve", "東京", "🙂", "(see)", "—", "x_2", "\t"]


def make_texts(n: int, seed: int) -> list[str]:
    """English-ish documents with capitals, numbers, punctuation, newlines and a little unicode."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), rng.choice(EXTRAS))
            if rng.random() < 0.3:
                words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ",", ":"]))
        texts.append(rng.choice([" ", "\n", "\n\n"]).join(sentences))
    return texts


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(make_texts(3000, seed=0), vocab_size=600, model_max_length=512, show_progress=False)


@pytest.fixture(scope="module")
def saved_dir(tokenizer: PreTrainedTokenizerFast, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok"), load_chat_template(TEMPLATE_PATH))


@pytest.fixture(scope="module")
def reloaded(saved_dir: Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(saved_dir)


# --- training, round trip, special tokens ---

UNICODE_PIECES = [
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "\x00",
    "\x1b",
    "\u200b",
    "🙂",
    "👩\u200d💻",
    "🇫🇷",
    "東京",
    "中文",
    "한국어",
]
UNICODE_PIECES += [
    "e\u0301",
    "\u0301",
    "a\u0308\u0304",
    "Ω",
    "ß",
    "١٢٣",
    "'s",
    "'LL",
    "123456",
    "...",
    "<|",
    "|>",
    "<think",
]
tricky_text = st.lists(st.one_of(st.sampled_from(UNICODE_PIECES), st.text(max_size=8)), max_size=30).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(), tricky_text))
def test_round_trip_exact(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_vocab_size_counts_everything(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(tokenizer) == 600
    assert tokenizer.vocab_size == 600


def test_added_tokens_are_single_ids_in_order(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(ALL_ADDED_TOKENS) == 14
    for expected_id, token in enumerate(ALL_ADDED_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == expected_id
        assert tokenizer.encode(token, add_special_tokens=False) == [expected_id]
        # never split, whatever surrounds it
        ids = tokenizer.encode(f"x{token}y {token}\n{token}{token}", add_special_tokens=False)
        assert ids.count(expected_id) == 4


def test_special_flags(tokenizer: PreTrainedTokenizerFast) -> None:
    assert tokenizer.eos_token == ENDOFTEXT and tokenizer.pad_token == PAD and tokenizer.bos_token is None
    assert set(tokenizer.all_special_tokens) == set(SPECIAL_TOKENS)
    text = "<|im_start|>assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|><|endoftext|>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    # think/tool markers survive skip_special_tokens so parsers can find them in decoded text
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == "assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    )


plain_text = st.lists(
    st.one_of(
        st.sampled_from(["<", "|", ">", "im_", "end", "/", "think", "tool_call", "reserved_0", "pad"]),
        st.text(max_size=6),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(), plain_text))
def test_plain_text_never_yields_added_token_ids(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    assume(not any(token in text for token in ALL_ADDED_TOKENS))
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert all(i >= len(ALL_ADDED_TOKENS) for i in ids)


def test_split_special_tokens_splits_literal_special_markers(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "user wrote: " + " ".join(SPECIAL_TOKENS)
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    special_ids = set(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    assert not special_ids & set(ids)
    assert tokenizer.decode(ids) == text
    # think/tool markers are normal added tokens (by design, like Qwen3): they stay single ids
    marker_ids = tokenizer(" ".join(MARKER_TOKENS), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert [i for i in marker_ids if i < len(ALL_ADDED_TOKENS)] == list(range(4, 10))


def test_vocab_too_small_raises_before_training() -> None:
    def never() -> Iterator[str]:
        raise AssertionError("training started")
        yield ""

    with pytest.raises(RecipeError, match=rf"vocab_size=280 .*minimum is {MIN_VOCAB_SIZE}"):
        train_tokenizer(never(), vocab_size=280)


def test_max_chars_caps_training_text() -> None:
    texts = make_texts(3000, seed=0)
    capped = train_tokenizer(texts, vocab_size=600, min_frequency=2, max_chars=200, show_progress=False)
    assert len(capped) < 600  # too little text for 600 tokens' worth of merges
    assert capped.decode(capped.encode(texts[0], add_special_tokens=False)) == texts[0]


# --- metrics and view ---


def test_bytes_per_token_improves_with_vocab(tokenizer: PreTrainedTokenizerFast) -> None:
    held_out = make_texts(200, seed=1)
    small = train_tokenizer(make_texts(3000, seed=0), vocab_size=MIN_VOCAB_SIZE, show_progress=False)
    ratio_small, ratio = bytes_per_token(small, held_out), bytes_per_token(tokenizer, held_out)
    assert 1.0 < ratio_small < ratio
    assert ratio > 3.0


def test_show_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "Talia Morvane walked to the mill."
    view = show_tokens(tokenizer, text, colour=False)
    assert view.startswith("[") and view.endswith("]")
    assert view[1:-1].split("][") == token_pieces(tokenizer, text)
    assert "".join(token_pieces(tokenizer, text)) == text
    assert "[\\n]" in show_tokens(tokenizer, "a\nb", colour=False)
    assert "\033[" in show_tokens(tokenizer, text, colour=True)
    # a token holding part of a UTF-8 character is shown as its bytes
    assert all(piece.startswith("<0x") for piece in token_pieces(tokenizer, "🦜"))


# --- saving ---


def test_saved_folder_reloads_identically(tokenizer: PreTrainedTokenizerFast, reloaded, saved_dir: Path) -> None:
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    for text in [*make_texts(20, seed=2), "<|im_start|>user\nhi<|im_end|>", "🙂 東京 e\u0301"]:
        assert reloaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert reloaded.eos_token == ENDOFTEXT and reloaded.pad_token == PAD and reloaded.bos_token is None
    assert set(reloaded.all_special_tokens) == set(SPECIAL_TOKENS)
    assert reloaded.model_max_length == 512
    assert reloaded.chat_template == TEMPLATE_PATH.read_text()


def test_tokenizer_config_loads_in_transformers_4(saved_dir: Path) -> None:
    config = json.loads((saved_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["additional_special_tokens"] == [t for t in SPECIAL_TOKENS if t not in (ENDOFTEXT, PAD)]
    assert "extra_special_tokens" not in config
    assert config["chat_template"] == TEMPLATE_PATH.read_text()
    assert (saved_dir / "chat_template.jinja").read_text() == TEMPLATE_PATH.read_text()
    assert config["eos_token"] == ENDOFTEXT and config["pad_token"] == PAD and config["bos_token"] is None


# --- chat template ---

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
]


def test_template_renders_exactly(reloaded) -> None:
    expected = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\nBlue.<|im_end|>\n"
        "<|im_start|>user\nAnother?<|im_end|>\n"
    )
    assert reloaded.apply_chat_template(CONVERSATION, tokenize=False) == expected
    prompted = reloaded.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert prompted == expected + "<|im_start|>assistant\n"
    no_system = reloaded.apply_chat_template(CONVERSATION[1:3], tokenize=False)
    assert no_system == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a town.",
        "parameters": {"type": "object", "properties": {"town": {"type": "string"}}, "required": ["town"]},
    },
}
TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Brenn?"},
    {
        "role": "assistant",
        "reasoning_content": "I should look it up.",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"town": "Brenn"}}}],
    },
    {"role": "tool", "content": '{"sky": "rain"}'},
    {"role": "assistant", "reasoning_content": "It rains.", "content": "It is raining in Brenn."},
]


def test_template_lists_optional_arguments_and_keeps_the_system_prompt(reloaded) -> None:
    tool = {
        "name": "lookup",  # a bare function schema (no "type": "function" wrapper) is listed too
        "description": "Find a word.",
        "parameters": {
            "type": "object",
            "properties": {"word": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["word"],
        },
    }
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = reloaded.apply_chat_template(messages, tools=[tool], tokenize=False)
    assert text.startswith(
        "<|im_start|>system\nBe brief.\n\nTools:\n- lookup(word: string, limit?: integer): Find a word.\n"
    )


def test_template_renders_tools_and_thinking(reloaded) -> None:
    text = reloaded.apply_chat_template(TOOL_CONVERSATION, tools=[WEATHER_TOOL], tokenize=False)
    # one line per tool (name, typed arguments, description) instead of the JSON schema: short contexts
    assert text.startswith("<|im_start|>system\nTools:\n- get_weather(town: string): Weather in a town.\nCall one as ")
    expected_tail = (
        "<|im_start|>user\nWeather in Brenn?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nI should look it up.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Brenn"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"sky": "rain"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n<think>\nIt rains.\n</think>\n\nIt is raining in Brenn.<|im_end|>\n"
    )
    assert text.endswith(expected_tail)
    # the tool call is parseable JSON between the tags (what vLLM's hermes parser does)
    call = text.split("<tool_call>\n")[-1].split("\n</tool_call>")[0]
    assert json.loads(call) == {"name": "get_weather", "arguments": {"town": "Brenn"}}


def test_template_tool_call_variants(reloaded) -> None:
    messages = [
        {"role": "user", "content": "Two towns."},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": '{"town": "A"}'}},
                {"name": "get_weather", "arguments": {"town": "B"}},
            ],
        },
        {"role": "tool", "content": "sun"},
        {"role": "tool", "content": {"sky": "fog"}},
    ]
    text = reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\nTwo towns.<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"town": "A"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"town": "B"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsun\n</tool_response>\n"
        '<tool_response>\n{"sky": "fog"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def _masked_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for i, (token, flag) in enumerate(zip(ids, mask)):
        if flag:
            if i == 0 or not mask[i - 1]:
                spans.append([])
            spans[-1].append(token)
    return spans


def test_assistant_masks_cover_assistant_content_and_im_end(reloaded) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *TOOL_CONVERSATION]
    out = reloaded.apply_chat_template(
        messages, tools=[WEATHER_TOOL], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    spans = [reloaded.decode(span) for span in _masked_spans(out["input_ids"], out["assistant_masks"])]
    assert spans == [
        "<think>\nI should look it up.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Brenn"}}\n</tool_call><|im_end|>',
        "<think>\nIt rains.\n</think>\n\nIt is raining in Brenn.<|im_end|>",
    ]
    simple = reloaded.apply_chat_template(CONVERSATION[:3], return_dict=True, return_assistant_tokens_mask=True)
    assert [reloaded.decode(s) for s in _masked_spans(simple["input_ids"], simple["assistant_masks"])] == [
        "Blue.<|im_end|>"
    ]


# --- recipe and script ---


def test_recipe_parses_to_defaults() -> None:
    (args,) = parse_recipe([TokenizerScriptArguments], [str(REPO / "recipes" / "tokenizer.yaml")])
    # the recipe adds the world's conversations; the dataclass default is corpus text alone
    assert args == TokenizerScriptArguments(chat_datasets=["data/world/sft", "data/world/tools_sft"])


def _run_script(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}
    command = [sys.executable, str(REPO / "scripts" / "train_tokenizer.py"), str(REPO / "recipes" / "tokenizer.yaml")]
    command += ["--chat_template", str(TEMPLATE_PATH), *extra]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_script_trains_and_saves(tmp_path: Path) -> None:
    data = tmp_path / "corpus"
    data.mkdir()
    for split, seed, n in [("train", 0, 400), ("validation", 1, 40)]:
        rows = [{"text": text, "id": i} for i, text in enumerate(make_texts(n, seed))]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    chats = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{i + 1}."}]}
        for i in range(200)
    ]
    chats.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "tok"
    result = _run_script(
        tmp_path, "--dataset_name", str(data), "--output_dir", str(out), "--vocab_size", "400",
        "--chat_datasets", str(chats),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "and on 200 rendered conversations" in result.stdout
    # the role names and chat phrasing, absent from the corpus, get merges: a conversation takes fewer tokens
    plain = tmp_path / "tok_plain"
    result = _run_script(
        tmp_path,
        "--dataset_name",
        str(data),
        "--output_dir",
        str(plain),
        "--vocab_size",
        "400",
        "--chat_datasets",
        "none",
    )
    assert result.returncode == 0, result.stderr
    conversation = rows[7]["messages"]
    lengths = [
        len(
            AutoTokenizer.from_pretrained(folder).apply_chat_template(conversation, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for folder in (out, plain)
    ]
    assert lengths[0] < lengths[1]
    assert "bytes per token on 'validation'" in result.stdout
    assert "sample: [" in result.stdout and str(out) in result.stdout
    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) <= 400 and loaded.eos_token == ENDOFTEXT
    assert loaded.decode(loaded.encode("café 🙂", add_special_tokens=False)) == "café 🙂"


def test_script_missing_dataset_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "corpus"
    result = _run_script(
        tmp_path, "--dataset_name", str(missing), "--output_dir", str(tmp_path / "tok"), "--chat_datasets", "none"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert str(missing) in lines[0] and "scripts/run_data.py recipes/data.yaml" in lines[0]
    assert not (tmp_path / "tok").exists()


def _hub_style_corpus(folder: Path) -> Path:
    """A local dataset laid out as HuggingFaceFW/fineweb-edu is on the Hub: named configs in README.md whose parquet
    files sit in sample/<size>/ without split folders. sample-100BT holds only the word 'zebra'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for size, seed in (("10BT", 0), ("10BT", 1), ("100BT", 2)):
        (folder / "sample" / size).mkdir(parents=True, exist_ok=True)
        texts = make_texts(200, seed) if size == "10BT" else ["zebra zebra zebras, zebra."] * 200
        table = pa.table({"text": texts, "id": [f"{seed}-{i}" for i in range(len(texts))]})
        pq.write_table(table, folder / "sample" / size / f"{seed:03d}_00000.parquet")
    configs = "".join(
        f"- config_name: sample-{size}\n  data_files:\n  - split: train\n    path: sample/{size}/*\n"
        for size in ("10BT", "100BT")
    )
    (folder / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    return folder


def test_script_streams_a_named_config_of_a_hub_style_corpus(tmp_path: Path) -> None:
    corpus = _hub_style_corpus(tmp_path / "fineweb-edu")
    common = ["--dataset_name", str(corpus), "--eval_split", "none", "--vocab_size", "400", "--chat_datasets", "none"]
    out = tmp_path / "tok"
    result = _run_script(
        tmp_path, *common, "--dataset_config", "sample-10BT", "--streaming", "true", "--max_train_chars", "30000",
        "--output_dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"training on {corpus} (sample-10BT), split 'train' (streamed)" in result.stdout
    assert "(30,000 characters)" in result.stdout  # the stream stops where max_train_chars says
    assert not any("zebra" in token for token in AutoTokenizer.from_pretrained(out).get_vocab())
    # the config named is the one read (here loaded whole, not streamed)
    other = tmp_path / "tok_other"
    result = _run_script(tmp_path, *common, "--dataset_config", "sample-100BT", "--output_dir", str(other))
    assert result.returncode == 0, result.stderr
    assert "(200 documents)" in result.stdout
    assert any("zebra" in token for token in AutoTokenizer.from_pretrained(other).get_vocab())
    # without a config, datasets cannot choose one: a one-line error before any training
    result = _run_script(tmp_path, *common, "--output_dir", str(tmp_path / "tok_none"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Config name is missing" in result.stderr
    assert not (tmp_path / "tok_none").exists()


def test_script_streams_the_eval_split_up_to_max_eval_docs(tmp_path: Path) -> None:
    data = tmp_path / "corpus"
    data.mkdir()
    for split, seed, n in [("train", 0, 300), ("validation", 1, 40)]:
        rows = [{"text": text} for text in make_texts(n, seed)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = _run_script(
        tmp_path, "--dataset_name", str(data), "--streaming", "true", "--max_eval_docs", "10", "--vocab_size", "400",
        "--chat_datasets", "none", "--output_dir", str(tmp_path / "tok"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "trained on 300 documents" in result.stdout
    assert "bytes per token on 'validation' (10 documents)" in result.stdout
    missing = _run_script(
        tmp_path, "--dataset_name", str(data), "--streaming", "true", "--text_column", "body",
        "--output_dir", str(tmp_path / "tok2"),
    )  # fmt: skip
    assert missing.returncode == 2 and "has no column 'body'" in missing.stderr, missing.stderr
