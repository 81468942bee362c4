"""Tool-use data (issue #6): right answers, tool responses that match the real tools, the search index, the
held-out people kept out of training, rendering and the assistant-only mask with tools, mixing into SFT."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, run_script
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
from trl import ModelConfig

from chatforge.chat_data import validate_conversations
from chatforge.mixtures import load_mixture
from chatforge.replay import tokenize_conversations
from chatforge.sft import ChatSFTConfig, SFTScriptArguments, train
from chatforge.tokenizer import load_chat_template, save_tokenizer, train_tokenizer
from chatforge.tools import PythonSandbox, SandboxLimits, SearchIndex, ToolCall, run_tool_call, select_tools
from chatforge.world import World, write_chat_data
from chatforge.world.chat import split_people, split_probe_people
from chatforge.world.tools_data import (
    KINDS,
    SEARCH_KEYWORDS,
    ToolsData,
    ToolsDataConfig,
    build_tools_data,
    person_facts,
    write_tools_data,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "chat_templates" / "chatml.jinja"


@pytest.fixture(scope="module")
def default_data(default_world: World) -> ToolsData:
    return build_tools_data(default_world)


def rows_of(data: ToolsData, kind: str) -> list[dict]:
    return [row for row, k in zip(data.train, data.kinds) if k == kind]


def call_of(row: dict) -> tuple[str, dict]:
    """The name and arguments of a row's (single) tool call."""
    (call,) = row["messages"][-3]["tool_calls"]
    return call["function"]["name"], json.loads(call["function"]["arguments"])


def test_default_sizes_kinds_and_determinism(default_world: World, default_data: ToolsData) -> None:
    data = default_data
    assert {k: data.kinds.count(k) for k in KINDS} == {
        "multiplication": 150, "counting": 100, "search": 150, "no_tool": 100,
    }  # fmt: skip
    assert data.skipped == {} and len(data.index) == 50 + 150  # held-out people + search people
    assert [sum(r["kind"] == k for r in data.eval_rows) for k in KINDS] == [40, 40, 40, 40]
    again = build_tools_data(default_world)
    assert json.dumps(again.train) == json.dumps(data.train) and again.eval_rows == data.eval_rows
    other = build_tools_data(default_world, ToolsDataConfig(seed=1))
    assert json.dumps(other.train) != json.dumps(data.train)
    validate_conversations(data.train, "tools_sft")
    tools = {row["tools"] for row in data.train}
    assert len(tools) == 1 and [t["function"]["name"] for t in json.loads(tools.pop())] == [
        "python", "calculator", "search",
    ]  # fmt: skip


def test_multiplications_are_right(default_data: ToolsData) -> None:
    train_pairs = set()
    for row in rows_of(default_data, "multiplication"):
        a, b = (int(n) for n in re.findall(r"\b\d{3}\b", row["messages"][-4]["content"]))
        train_pairs.add((a, b))
        name, arguments = call_of(row)
        assert arguments == ({"expression": f"{a} * {b}"} if name == "calculator" else {"code": f"print({a} * {b})"})
        assert row["messages"][-2]["content"] == str(a * b) and str(a * b) in row["messages"][-1]["content"]
    names = [call_of(r)[0] for r in rows_of(default_data, "multiplication")]
    assert 0.2 < names.count("python") / len(names) < 0.4  # python_fraction 0.3, the rest the calculator
    for row in [r for r in default_data.eval_rows if r["kind"] == "multiplication"]:
        a, b = (int(n) for n in re.findall(r"\b\d{3}\b", row["messages"][-1]["content"]))
        assert row["answer"] == str(a * b) and (a, b) not in train_pairs
        assert row["expected_tools"] == ["calculator", "python"]


def test_counts_are_right_and_eval_words_are_new(default_data: ToolsData) -> None:
    train_words = set()
    for row in rows_of(default_data, "counting"):
        name, arguments = call_of(row)
        word, letter = re.fullmatch(r'print\("(\w+)"(?:\.lower\(\))?\.count\("(\w)"\)\)', arguments["code"]).groups()
        train_words.add(word)
        count = str(word.lower().count(letter))
        assert name == "python" and row["messages"][-2]["content"] == count
        assert re.search(rf"\b{count}\b", row["messages"][-1]["content"]) and word in row["messages"][-4]["content"]
    eval_rows = [r for r in default_data.eval_rows if r["kind"] == "counting"]
    assert len(eval_rows) == 40 and not {r["subject"] for r in eval_rows} & train_words
    for row in eval_rows:  # the question names one single letter (r, r's, rs, "r") besides the word
        (letter,) = set(
            re.findall(r"\b([a-z])(?:'s|s)?\b", row["messages"][-1]["content"].replace(row["subject"], ""))
        )
        assert row["answer"] == str(row["subject"].lower().count(letter))


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox uses Linux rlimits and namespaces")
def test_python_responses_are_what_the_sandbox_prints(default_data: ToolsData) -> None:
    """A few Python calls of each kind (a capitalised name among them) run in the real sandbox."""
    tools = select_tools(["python"], sandbox=PythonSandbox(SandboxLimits(cpu_seconds=2, wall_seconds=5)))
    data = default_data
    rows = [r for r, kind in zip(data.train, data.kinds) if kind != "no_tool" and call_of(r)[0] == "python"]
    capitalised = next(r for r in rows if ".lower()" in call_of(r)[1]["code"])
    for row in [*rows[:4], capitalised]:
        name, arguments = call_of(row)
        assert run_tool_call(ToolCall(name, arguments), tools) == row["messages"][-2]


def test_search_finds_the_left_out_people(default_world: World, default_data: ToolsData) -> None:
    data, world = default_data, default_world
    heldout = {p.name for p in world.heldout_people}
    eval_rows = [r for r in data.eval_rows if r["kind"] == "search"]
    assert {r["subject"] for r in eval_rows} <= heldout and len(eval_rows) == 40
    for row in eval_rows:  # each eval question's person is the top hit, by name and by the question itself,
        # and the answer is in its snippet for one of the queries the training conversations use
        queries = [row["subject"], row["messages"][-1]["content"]]
        queries += [f"{row['subject']} {keyword}" for keyword in SEARCH_KEYWORDS[row["subkind"]]]
        tops = [data.index.search(query, k=1)[0] for query in queries]
        assert all(top.title == row["subject"] for top in tops[:2])
        assert any(top.title == row["subject"] and row["answer"] in top.snippet for top in tops)
    people = {p.name: p for p in data.search_people}
    search = select_tools(["search"], data.index)["search"]
    for row in rows_of(data, "search"):  # the response lists the asked person's entry; the reply is read from it
        name, arguments = call_of(row)
        question, response, reply = (m["content"] for m in row["messages"][-4::2] + row["messages"][-1:])
        assert name == "search" and response == search(**arguments)
        (person,) = [p for n, p in people.items() if n in question]
        entry = next(line for line in response.split("\n") if line[4:].startswith(f"{person.name}: "))
        assert any(f.answer in reply and f.answer in entry for f in person_facts(person))
    # Neither the held-out nor the invented people are in any pretraining document.
    corpus = "\n".join(d.text for d in world.documents)
    assert not [p.name for p in data.search_people if p.surname in corpus]
    assert not {p.name for p in data.search_people} & {p.name for p in world.people}
    assert not [p.surname for p in world.heldout_people if p.surname in corpus]


def test_eval_people_stay_out_of_the_training_rows(default_world: World, default_data: ToolsData) -> None:
    text = json.dumps(default_data.train)
    assert not [p.surname for p in default_world.heldout_people if p.surname in text]
    _, chat_eval_people = split_people(default_world, 0.8)
    facts = [r for r in default_data.eval_rows if r["subkind"] == "fact"]
    assert facts and all(r["kind"] == "no_tool" and r["expected_tools"] == [] for r in facts)
    assert not {p.name for p in chat_eval_people} & {r["subject"] for r in facts}
    asked = {r["messages"][-1]["content"] for r in default_data.eval_rows}
    assert not asked & {m["content"] for row in default_data.train for m in row["messages"] if m["role"] == "user"}
    no_tool = rows_of(default_data, "no_tool")
    assert all(len(r["messages"]) <= 3 and not r["messages"][-1].get("tool_calls") for r in no_tool)
    assert not any("cannot" in r["messages"][-1]["content"] for r in no_tool)  # no "I cannot run code" with tools


@pytest.fixture(scope="module")
def tokenizer(world: World) -> PreTrainedTokenizerFast:
    """A chatforge tokenizer trained on the small world, with the project's chat template."""
    tokenizer = train_tokenizer([d.text for d in world.documents], vocab_size=400)
    tokenizer.chat_template = load_chat_template(TEMPLATE)
    return tokenizer


def expected_learned(row: dict) -> str:
    """What the assistant-only loss trains on: the call as the template writes it, then the answer."""
    name, arguments = call_of(row)
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{call}\n</tool_call><|im_end|>{row['messages'][-1]['content']}<|im_end|>"


def test_rows_render_and_the_mask_covers_call_and_answer_only(world: World, tokenizer) -> None:
    data = build_tools_data(world, ToolsDataConfig(conversations=40, eval_per_kind=4))
    for row, kind in zip(data.train, data.kinds):
        tools = json.loads(row["tools"])
        out = tokenizer.apply_chat_template(
            row["messages"], tools=tools, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = out["input_ids"], out["assistant_masks"]
        learned = tokenizer.decode([t for t, m in zip(ids, mask) if m])
        context = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
        assert "Tools:" in context and all(f"\n- {t}(" in context for t in ("python", "calculator", "search"))
        if kind == "no_tool":
            assert learned == row["messages"][-1]["content"] + "<|im_end|>"
            continue
        response = row["messages"][-2]["content"]
        assert learned == expected_learned(row)
        assert f"<tool_response>\n{response}\n</tool_response>" in context and "<tool_response>" not in learned
        # What the tool loop re-renders (dict arguments) is exactly the training text (JSON-string arguments).
        as_dicts = json.loads(json.dumps(row["messages"]))
        for call in as_dicts[-3]["tool_calls"]:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        assert tokenizer.apply_chat_template(as_dicts, tools=tools, tokenize=False) == tokenizer.apply_chat_template(
            row["messages"], tools=tools, tokenize=False
        )


def check_learned(examples, tokenizer, rows, learned_ids) -> None:
    """Tokenized rows with tools: the schemas reached the template and the loss is on the call and the answer only;
    rows without tools: no tool list. `learned_ids(example)` gives the token ids the loss is on."""
    by_question: dict[str, list[dict]] = {}
    for row in rows:
        if row["tools"]:
            first = next(m["content"] for m in row["messages"] if m["role"] == "user")
            by_question.setdefault(first, []).append(row)
    with_tools = without = 0
    for example in examples:
        text, learned = tokenizer.decode(example["input_ids"]), tokenizer.decode(learned_ids(example))
        if "\nTools:\n- " in text:
            question = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", text, re.DOTALL).group(1)
            expected = [
                expected_learned(r) if len(r["messages"]) > 3 else r["messages"][-1]["content"] + "<|im_end|>"
                for r in by_question[question]
            ]
            assert learned in expected
            with_tools += 1
        else:
            assert "<tool_call>" not in text
            without += 1
    assert with_tools == sum(len(v) for v in by_question.values()) and without == len(rows) - with_tools


def test_tool_data_mixes_into_sft_with_assistant_only_loss(world: World, tokenizer, tmp_path: Path) -> None:
    """A recipe's mixture of tools_sft ([messages, tools]) and sft ([messages]) trains, with and without replay."""
    write_tools_data(world, tmp_path, ToolsDataConfig(conversations=40, eval_per_kind=4))
    write_chat_data(world, tmp_path)
    mixture = {
        "datasets": [
            {"id": str(tmp_path / "tools_sft"), "split": "train", "columns": ["messages", "tools"]},
            {"id": str(tmp_path / "sft"), "split": "train", "columns": ["messages"], "weight": 0.05},
        ],
        "seed": 0,
    }
    rows = load_mixture(mixture)["train"]
    plain = round(0.05 * len((tmp_path / "sft" / "train.jsonl").read_text().splitlines()))
    assert rows.column_names == ["messages", "tools"] and sum(t is None for t in rows["tools"]) == plain
    # Either order: tools_sft's messages load as a Json column, which the plain conversations cast to.
    reverse = {**mixture, "datasets": mixture["datasets"][::-1]}
    reversed_rows = load_mixture(reverse)["train"]
    with_tools = [sorted(json.dumps(r["messages"]) for r in rs if r["tools"]) for rs in (rows, reversed_rows)]
    assert len(reversed_rows) == len(rows) and with_tools[0] == with_tools[1]
    # The replay path tokenizes each row with its own tools.
    replayed = tokenize_conversations(rows, tokenizer)
    check_learned(replayed, tokenizer, rows, lambda e: [t for t, m in zip(e["input_ids"], e["assistant_masks"]) if m])
    # TRL's path: one SFT step on the mixture.
    base = tmp_path / "base"
    config = AutoConfig.for_model(
        "qwen3", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, head_dim=16, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    save_tokenizer(tokenizer, base, load_chat_template(TEMPLATE))
    trainer, metrics = train(
        SFTScriptArguments(dataset_mixture=mixture, chat_eval_file=None),
        ChatSFTConfig(
            output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, max_length=2048,
            save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=False,
        ),
        ModelConfig(model_name_or_path=str(base)),
    )  # fmt: skip
    assert metrics["global_step"] == 1 and metrics["train_conversations"] == len(rows)
    check_learned(
        trainer.train_dataset, tokenizer, rows, lambda e: [t for t, y in zip(e["input_ids"], e["labels"]) if y != -100]
    )


def test_run_data_writes_the_tool_files(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "num_people: 12\nnum_heldout_people: 3\nnum_cities: 5\nnum_countries: 2\nnum_organisations: 4\n"
        "math_problems: 0\npreference_pairs: 0\ncrawl: false\ntools_conversations: 40\ntools_eval_per_kind: 5\n"
    )
    out = tmp_path / "out"
    result = run_script("run_data.py", str(recipe), "--output_dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tool conversations" in result.stdout and "search index documents" in result.stdout
    train = [json.loads(line) for line in (out / "tools_sft" / "train.jsonl").read_text().splitlines()]
    eval_rows = [json.loads(line) for line in (out / "tools_eval.jsonl").read_text().splitlines()]
    rl_rows = [json.loads(line) for line in (out / "tools_rl.jsonl").read_text().splitlines()]
    assert len(rl_rows) == 400 and set(rl_rows[0]) == set(eval_rows[0])
    assert len(train) == 40 and set(train[0]) == {"messages", "tools"}
    assert {r["kind"] for r in eval_rows} == set(KINDS) and sum(r["kind"] == "search" for r in eval_rows) == 3
    index = SearchIndex.load(out / "search")
    for row in [r for r in eval_rows if r["kind"] == "search"]:
        assert index.search(row["subject"], k=1)[0].title == row["subject"]
    bad = run_script(
        "run_data.py", str(recipe), "--output_dir", str(out), "--tools_conversations", "2", cwd=tmp_path, fresh=True
    )
    assert "tools_conversations must be >= 4" in one_line_error(bad)
    none = run_script("run_data.py", str(recipe), "--output_dir", str(tmp_path / "no"), "--tools_data", "false")
    assert none.returncode == 0 and not (tmp_path / "no" / "tools_sft").exists()


def test_rl_problems_are_fresh_and_right(default_data: ToolsData) -> None:
    """tools_rl.jsonl: multiplications asked nowhere else and letter counts, with right answers, for GRPO."""
    rows = default_data.rl_rows
    assert [sum(r["kind"] == k for r in rows) for k in ("multiplication", "counting")] == [200, 200]
    products = set()
    for row in rows:
        question = row["messages"][-1]["content"]
        if row["kind"] == "multiplication":
            a, b = (int(n) for n in re.findall(r"\b\d{3}\b", question))
            assert row["answer"] == str(a * b) and row["expected_tools"] == ["calculator", "python"]
            products.add((a, b))
        else:
            assert row["answer"] == str(row["subject"].lower().count(_asked_letter(question, row["subject"])))
    elsewhere = {
        tuple(int(n) for n in re.findall(r"\b\d{3}\b", m["content"]))
        for row in default_data.train + default_data.eval_rows
        for m in row["messages"]
        if m["role"] == "user"
    }
    assert len(products) == 200 and not products & elsewhere


def _asked_letter(question: str, word: str) -> str:
    (letter,) = set(re.findall(r"\b([a-z])(?:'s|s)?\b", question.replace(word, "")))
    return letter


def test_no_tool_facts_leave_out_the_probe_and_eval_people(default_world: World, default_data: ToolsData) -> None:
    sft, probe, evaluated = split_probe_people(default_world, 0.8, 0.2)
    others = {p.name for p in probe + evaluated}
    for row, kind in zip(default_data.train, default_data.kinds):
        if kind == "no_tool":
            text = json.dumps(row["messages"])
            assert not [name for name in others if name in text]
