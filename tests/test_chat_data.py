"""Tests of the chat data: world conversations and identity, validation, OpenAssistant trees, mixtures, run_data.py."""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import REPO, SMALL, run_script

from chatforge.chat_data import check_generation_tags, load_oasst_trees, validate_conversations
from chatforge.configs import RecipeError
from chatforge.mixtures import load_mixture, parse_mixture, weighted_indices
from chatforge.tokenizer import build_backend
from chatforge.world import World, WorldConfig
from chatforge.world.chat import (
    ASSISTANT_NAME,
    DEFAULT_SYSTEM_PROMPT,
    IDENTITY,
    TEMPLATES,
    ChatData,
    ChatDataConfig,
    build_chat_data,
    split_people,
    split_probe_people,
)
from chatforge.world.corpus import write_chat_data, write_math_data
from chatforge.world.entities import RELATIONS
from chatforge.world.math import MathConfig

ROOT = Path(__file__).resolve().parents[1]
OASST = ROOT.parent / "shared" / "data" / "prefs" / "oasst_en_100_tree.jsonl"


@pytest.fixture(scope="module")
def default_chat(default_world: World) -> ChatData:
    return build_chat_data(default_world)


@pytest.fixture(scope="module")
def tokenizer():
    from chatforge.tokenizer import MIN_VOCAB_SIZE, load_chat_template, train_tokenizer

    texts = ["Where was Talia born? She was born in Lorvik.", "I'm Forge, made by the chatforge team."] * 20
    tok = train_tokenizer(texts, vocab_size=MIN_VOCAB_SIZE + 20, min_frequency=1, show_progress=False)
    tok.chat_template = load_chat_template(ROOT / "chat_templates" / "chatml.jinja")
    return tok


def _all_sft(data: ChatData) -> list[list[dict[str, str]]]:
    return data.sft_train + data.sft_test + data.identity


def _names_pattern(names: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")


# ---------------------------------------------------------------- world chat data


def test_chat_data_is_deterministic(world: World) -> None:
    first, again = build_chat_data(world), build_chat_data(World.generate(SMALL))
    assert first == again
    other = build_chat_data(World.generate(WorldConfig(**{**SMALL.__dict__, "seed": 4})))
    assert other.sft_train != first.sft_train


def test_default_sizes_and_split(default_world: World, default_chat: ChatData) -> None:
    data = default_chat
    assert 2500 <= len(data.sft_train) <= 6000
    assert 0.04 <= len(data.sft_test) / (len(data.sft_train) + len(data.sft_test)) <= 0.06
    assert (len(data.sft_people), len(data.probe_people), len(data.eval_people)) == (150, 50, 50)
    groups = [set(data.sft_people), set(data.probe_people), set(data.eval_people)]
    assert sum(map(len, groups)) == len(set().union(*groups)) == len(default_world.train_people)  # disjoint, all
    assert all(c in data.sft_train for c in data.identity)
    with_system = sum(c[0]["role"] == "system" for c in data.sft_train) / len(data.sft_train)
    assert 0.4 < with_system < 0.6
    multi = sum(sum(m["role"] == "user" for m in c) > 1 for c in data.sft_train) / len(data.sft_train)
    assert 0.25 < multi < 0.75


def test_templates_vary_and_answers_contain_exact_answer(default_world: World) -> None:
    assert set(TEMPLATES) == set(RELATIONS)
    from chatforge.world.chat import _fill

    for relation, templates in TEMPLATES.items():
        assert len(set(templates.questions)) >= 4, relation
        fact = next(f for f in default_world.facts if f.relation == relation)
        for template in templates.questions:
            assert fact.subject in _fill(template, fact), template
        for template in templates.answers + templates.followup_answers:
            for pronoun in ("she", "he", "it"):
                assert fact.answer in _fill(template, fact, pronoun), template


def test_every_sft_fact_is_asked_and_answered(default_world: World, default_chat: ChatData) -> None:
    texts = [json.dumps(c) for c in default_chat.sft_train + default_chat.sft_test]
    sft = set(default_chat.sft_people)
    for fact in default_world.facts:
        if fact.subject_type == "person" and fact.subject not in sft:
            continue
        answers = [
            t for t in texts if fact.subject in t and f"{fact.answer}" in t
        ]  # a conversation about the subject stating the answer
        assert len(answers) >= 2, fact


def test_pronoun_followups(default_world: World, default_chat: ChatData) -> None:
    words = {"she": {"she", "her"}, "he": {"he", "his", "him"}}
    pronoun = {p.name: p.pronoun for p in default_world.people}
    checked = 0
    for conversation in default_chat.sft_train:
        users = [m["content"] for m in conversation if m["role"] == "user"]
        name = next((n for n in default_chat.sft_people if n in users[0]), None)
        if name is None:
            continue
        right, wrong = words[pronoun[name]], words["he" if pronoun[name] == "she" else "she"]
        for question in users[1:]:
            tokens = set(re.findall(r"[a-z]+", question.lower()))
            assert not tokens & wrong, (name, users)
            checked += bool(tokens & right)
    assert checked > 500


def test_no_eval_probe_heldout_or_unseen_person_in_sft(default_world: World, default_chat: ChatData) -> None:
    eval_names = set(default_chat.eval_people) | set(default_chat.probe_people) | set(default_chat.unseen_people)
    heldout = {p.name for p in default_world.heldout_people}
    pattern = _names_pattern(eval_names | heldout)
    for conversation in _all_sft(default_chat):
        for message in conversation:
            found = pattern.search(message["content"])
            assert found is None, (found.group(0), conversation)


def test_chat_eval_rows(default_world: World, default_chat: ChatData) -> None:
    rows = default_chat.chat_eval
    facts = {(f.subject, f.relation): f.answer for f in default_world.facts}
    fact_rows = [r for r in rows if r["kind"] == "fact"]
    assert len(fact_rows) == 5 * len(default_chat.eval_people)
    assert {r["subject"] for r in fact_rows} == set(default_chat.eval_people)
    for row in fact_rows:
        assert row["answer"] == facts[(row["subject"], row["relation"])]
        assert row["messages"][-1]["role"] == "user" and row["subject"] in row["messages"][-1]["content"]
    with_system = sum(r["messages"][0]["role"] == "system" for r in fact_rows) / len(fact_rows)
    assert 0.3 < with_system < 0.7
    identity_rows = [r for r in rows if r["kind"] == "identity"]
    assert {r["relation"] for r in identity_rows} == set(IDENTITY)
    assert any(r["answer"] == ASSISTANT_NAME for r in identity_rows)
    assert any(r["answer"] == "chatforge" for r in identity_rows)
    assert set(rows[0]) == {"messages", "answer", "kind", "relation", "subject"}


def test_eval_people_are_those_of_the_two_way_split(default_world: World, default_chat: ChatData) -> None:
    """The probe people come out of the SFT people: the chat eval people stay those of the rule before the probe
    (the part of the seeded shuffle beyond the first 80%), so chat_eval.jsonl is unchanged."""
    people = list(default_world.train_people)
    random.Random(f"{default_world.config.seed}:sft-people").shuffle(people)
    assert set(default_chat.eval_people) == {p.name for p in people[200:]}
    assert [p.name for p in split_people(default_world, 0.8)[1]] == default_chat.eval_people
    assert set(default_chat.sft_people) | set(default_chat.probe_people) == {p.name for p in people[:200]}
    no_probe = build_chat_data(default_world, ChatDataConfig(probe_people_fraction=0.0, probe_unseen_people=0))
    assert no_probe.chat_eval == default_chat.chat_eval and no_probe.heldout_eval == default_chat.heldout_eval
    assert len(no_probe.sft_people) == 200 and no_probe.probe == [] and no_probe.probe_people == []
    assert [len(part) for part in split_probe_people(default_world, 0.8, 0.8)] == [1, 199, 50]  # SFT keeps one


def test_probe_rows(default_world: World, default_chat: ChatData) -> None:
    rows = default_chat.probe
    facts = {(f.subject, f.relation): f.answer for f in default_world.facts}
    fact_rows = [r for r in rows if r["kind"] == "fact"]
    unseen_rows = [r for r in rows if r["kind"] == "unseen"]
    assert len(fact_rows) == 5 * 50 and {r["subject"] for r in fact_rows} == set(default_chat.probe_people)
    assert all(r["answer"] == facts[(r["subject"], r["relation"])] for r in fact_rows)
    assert len(unseen_rows) == 50 and [r["subject"] for r in unseen_rows] == default_chat.unseen_people
    assert all(r["answer"] is None for r in unseen_rows)
    assert {r["relation"] for r in unseen_rows} == {r for r, (kind, _) in RELATIONS.items() if kind == "person"}
    for row in rows:
        assert set(row) == {"messages", "answer", "kind", "relation", "subject"}
        assert row["messages"][-1]["role"] == "user" and row["subject"] in row["messages"][-1]["content"]
    assert 0.3 < sum(r["messages"][0]["role"] == "system" for r in rows) / len(rows) < 0.7
    # Every group of people is disjoint from the others; the unseen people exist nowhere in the world.
    groups = {
        "sft": set(default_chat.sft_people), "probe": set(default_chat.probe_people),
        "eval": set(default_chat.eval_people), "heldout": {p.name for p in default_world.heldout_people},
        "unseen": set(default_chat.unseen_people),
    }  # fmt: skip
    assert sum(map(len, groups.values())) == len(set().union(*groups.values())) == 150 + 50 + 50 + 50 + 50
    surnames = {name.split()[1] for name in groups["unseen"]}
    world_words = {p.surname for p in default_world.people} | {p.first_name for p in default_world.people}
    world_words |= {c.name for c in default_world.cities} | {c.name for c in default_world.countries}
    assert not surnames & world_words and len(surnames) == 50
    corpus = "\n".join(d.text for d in default_world.documents)
    assert not [s for s in surnames if s in corpus]
    from chatforge.world.tools_data import invent_people  # the tool data's invented people are other people

    assert not groups["unseen"] & {p.name for p in invent_people(default_world, 150, 0)}


def test_probe_data_is_deterministic_and_configurable(world: World) -> None:
    config = ChatDataConfig(probe_unseen_people=7)
    first, again = build_chat_data(world, config), build_chat_data(World.generate(SMALL), config)
    assert first.probe == again.probe and first.unseen_people == again.unseen_people
    assert len(first.probe_people) == 8 and len(first.unseen_people) == 7 and len(first.sft_people) == 24
    other = build_chat_data(World.generate(WorldConfig(**{**SMALL.__dict__, "seed": 4})), config)
    assert other.probe != first.probe and other.unseen_people != first.unseen_people
    with pytest.raises(RecipeError, match=r"probe_people_fraction must be in \[0, sft_people_fraction=0.8\)"):
        build_chat_data(world, ChatDataConfig(probe_people_fraction=0.8))
    with pytest.raises(RecipeError, match="probe_unseen_people must be >= 0, got -1"):
        build_chat_data(world, ChatDataConfig(probe_unseen_people=-1))


def test_identity_answers_are_consistent() -> None:
    train_questions = {q for topic in IDENTITY.values() for q in topic.questions}
    assert "Forge" in DEFAULT_SYSTEM_PROMPT and "chatforge team" in DEFAULT_SYSTEM_PROMPT
    for name, topic in IDENTITY.items():
        assert all(topic.keyword in answer for answer in topic.answers), name
        assert len(topic.questions) >= 5 and len(topic.eval_questions) >= 2, name
        assert not set(topic.eval_questions) & train_questions, name
    answers = " ".join(a for topic in IDENTITY.values() for a in topic.answers)
    assert "OpenAI" not in answers and "ChatGPT" not in answers


def test_identity_conversations(default_chat: ChatData) -> None:
    identity = default_chat.identity
    assert 400 <= len(identity) <= 500
    single = sum(len([m for m in c if m["role"] == "user"]) == 1 for c in identity)
    assert 0.4 < single / len(identity) < 0.8
    answers = {a for topic in IDENTITY.values() for a in topic.answers}
    assert all(m["content"] in answers for c in identity for m in c if m["role"] == "assistant")
    # identity questions also appear inside world-QA chats
    mixed = [c for c in default_chat.sft_train if c not in identity and any(m["content"] in answers for m in c)]
    assert len(mixed) > 50


def test_every_conversation_validates_and_renders(world: World, default_chat: ChatData, tokenizer) -> None:
    data = build_chat_data(world)
    assert validate_conversations([{"messages": c} for c in _all_sft(data)], "small world") == len(_all_sft(data))
    assert validate_conversations([{"messages": c} for c in default_chat.sft_train], "sft") == len(
        default_chat.sft_train
    )
    for conversation in _all_sft(data):
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        assert text.count("<|im_start|>") == len(conversation)
        assert all(m["content"] in text for m in conversation)
    conversation = next(c for c in data.sft_train if c[0]["role"] == "system" and len(c) >= 5)
    out = tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = tokenizer.decode([i for i, keep in zip(ids, mask) if keep])
    assert masked == "".join(m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant")
    for row in data.chat_eval:
        prompt = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        assert prompt.endswith("<|im_start|>assistant\n")


def test_split_people_edge_cases(world: World) -> None:
    sft, held = split_people(world, 0.8)
    assert len(sft) == 32 and len(held) == 8
    sft, held = split_people(world, 0.999)
    assert len(held) == 1
    with pytest.raises(RecipeError, match="sft_people_fraction"):
        from chatforge.world.chat import ChatDataConfig

        build_chat_data(world, ChatDataConfig(sft_people_fraction=1.0))


# ---------------------------------------------------------------- validation

GOOD = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]}


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "empty conversation"),
        ([{"content": "Hi"}, GOOD[1]], "has no role"),
        ([{"role": "user"}, GOOD[1]], "has no content"),
        ([{"role": "human", "content": "Hi"}, GOOD[1]], "unknown role 'human'; valid roles are system, user"),
        ([*GOOD, {"role": "system", "content": "Be brief."}, *GOOD], "system message may only come first"),
        ([GOOD[0], GOOD[0], GOOD[1]], "must alternate"),
        ([GOOD[0], GOOD[1], GOOD[1]], "must alternate"),
        ([GOOD[1]], "must alternate"),
        ([*GOOD, GOOD[0]], "must end with an assistant turn"),
        ([{"role": "system", "content": "x"}], "must end with an assistant turn"),
        (
            [GOOD[0], {"role": "tool", "content": "42"}, GOOD[1]],
            "(tool) must follow an assistant message with tool_calls",
        ),
        ([GOOD[0], GOOD[1], {"role": "tool", "content": "42"}, GOOD[1]], "(tool) must follow"),
        ("Hi", "must be a list"),
        ([GOOD[0], {"role": "assistant", "content": 3}], "content must be a string"),
    ],
)
def test_validation_failures_name_dataset_and_row(messages: list, expected: str) -> None:
    rows = [{"messages": GOOD}, {"messages": GOOD}, {"messages": messages}]
    with pytest.raises(RecipeError) as info:
        validate_conversations(rows, "my-data")
    message = str(info.value)
    assert message.startswith("my-data: row 2") and expected in message and "\n" not in message, message


def test_validation_accepts_tools_and_uses_datasets() -> None:
    import datasets

    tools = [GOOD[0], TOOL_CALL, {"role": "tool", "content": "42"}, {"role": "tool", "content": "43"}, GOOD[1]]
    assert validate_conversations([{"messages": [{"role": "system", "content": "s"}, *tools, *GOOD]}], "t") == 1
    ds = datasets.Dataset.from_list([{"messages": GOOD}] * 3 + [{"messages": [GOOD[0]]}])
    assert validate_conversations(ds, "ds", max_rows_checked=3) == 3
    with pytest.raises(RecipeError, match="ds: row 3: .*end with an assistant"):
        validate_conversations(ds, "ds")
    with pytest.raises(RecipeError, match="ds: no `messages` column; the dataset has columns: text, id"):
        validate_conversations(datasets.Dataset.from_dict({"text": ["a"], "id": [1]}), "ds")
    with pytest.raises(RecipeError, match="lst: row 0 has no `messages` field"):
        validate_conversations([{"text": "a"}], "lst")


def test_check_generation_tags() -> None:
    check_generation_tags((ROOT / "chat_templates" / "chatml.jinja").read_text())
    check_generation_tags("{% generation %}x{% endgeneration %}")
    with pytest.raises(RecipeError, match=r"generation.*assistant_only_loss.*chat_templates/chatml.jinja"):
        check_generation_tags("{% for m in messages %}{{ m.content }}{% endfor %}")


# ---------------------------------------------------------------- OpenAssistant


def _walk_checks(tree: dict, messages: list[dict[str, str]]) -> int:
    """Follow `messages` down the tree independently; check each reply is the best-ranked sibling."""
    node = tree["prompt"]
    assert messages[0] == {"role": "user", "content": node["text"].strip()}
    ranked = 0
    for message in messages[1:]:
        children = [c for c in node["replies"] if c["text"].strip() == message["content"]]
        assert len(children) == 1
        child = children[0]
        assert child["role"] == ("assistant" if message["role"] == "assistant" else "prompter")
        ranks = [c["rank"] for c in node["replies"] if c.get("rank") is not None]
        if ranks:
            assert child.get("rank") == min(ranks) == 0
            ranked += message["role"] == "assistant"
        node = child
    # stopped at a leaf, or only a user turn (dropped) followed
    assert not [c for c in node["replies"] if c["role"] != node["role"]] or messages[-1]["role"] == "assistant"
    return ranked


@pytest.mark.skipif(not OASST.is_file(), reason=f"OpenAssistant sample not found at {OASST}")
def test_oasst_trees_real_file() -> None:
    trees = [json.loads(line) for line in OASST.read_text().splitlines()]
    dataset = load_oasst_trees(OASST)
    assert "messages" in dataset.column_names
    assert validate_conversations(dataset, "oasst") == len(dataset)
    assert 90 <= len(dataset) <= len(trees)
    by_id = {t["message_tree_id"]: t for t in trees}
    ranked = sum(_walk_checks(by_id[row["tree_id"]], row["messages"]) for row in dataset)
    turns = sum(len(m) for m in dataset["messages"])
    print(f"\nOASST: {len(trees)} trees -> {len(dataset)} conversations, {turns} messages, {ranked} ranked replies")
    assert ranked >= 50
    # by hand: the first tree's rank-0 answer
    first = dataset[0]["messages"]
    assert first[0]["content"] == "How can I find the best 401k plan for my needs?"
    assert first[1]["content"].startswith("The first step is to research your options.")
    assert len(first) == 2


def test_oasst_skips_deleted_nonenglish_and_orphan_prompts() -> None:
    def node(text: str, role: str, replies: list | None = None, **extra) -> dict:
        return {"text": text, "role": role, "lang": "en", "deleted": False, "replies": replies or [], **extra}

    good = node("Q?", "prompter", [node("bad", "assistant", rank=1), node("best", "assistant", rank=0)])
    deleted = node("Q?", "prompter", [node("A", "assistant")], deleted=True)
    german = node("Frage?", "prompter", [node("Antwort", "assistant")], lang="de")
    orphan = node("Q?", "prompter", [node("A", "assistant", deleted=True)])
    voted = node(
        "Q?", "prompter", [node("meh", "assistant", emojis={"-1": 2}), node("yay", "assistant", emojis={"+1": 3})]
    )
    trees = [{"message_tree_id": str(i), "prompt": p} for i, p in enumerate([good, deleted, german, orphan, voted])]
    dataset = load_oasst_trees(trees)
    assert dataset["tree_id"] == ["0", "4"]
    assert [m[-1]["content"] for m in dataset["messages"]] == ["best", "yay"]
    assert len(load_oasst_trees(trees, lang=None)) == 3
    with pytest.raises(RecipeError, match="not found"):
        load_oasst_trees(ROOT / "nope.jsonl")


# ---------------------------------------------------------------- mixtures


@pytest.fixture(scope="module")
def chat_dir(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chat")
    write_chat_data(world, out)
    return out


def test_mixture_weights_and_determinism(chat_dir: Path) -> None:
    sft = len((chat_dir / "sft" / "train.jsonl").read_text().splitlines())
    identity = len((chat_dir / "identity" / "train.jsonl").read_text().splitlines())
    mixture = {
        "datasets": [
            {"id": str(chat_dir / "sft"), "split": "train", "columns": ["messages"], "weight": 0.5},
            {"id": str(chat_dir / "identity" / "train.jsonl"), "weight": 2.0},
        ],
        "seed": 7,
    }
    first = load_mixture(mixture)
    assert list(first) == ["train"] and first["train"].column_names == ["messages"]
    assert len(first["train"]) == round(0.5 * sft) + 2 * identity
    again = load_mixture(copy.deepcopy(mixture))
    assert first["train"]["messages"] == again["train"]["messages"]
    split = load_mixture({**mixture, "test_split_size": 0.1})
    assert set(split) == {"train", "test"} and len(split["train"]) + len(split["test"]) == len(first["train"])
    assert len(weighted_indices(10, 2.5, "s")) == 25 and weighted_indices(10, 0.3, "s") == weighted_indices(
        10, 0.3, "s"
    )
    assert sorted(set(weighted_indices(10, 1.5, "s"))) == list(range(10))


def test_mixture_combines_conversations_with_reasoning(world: World, chat_dir: Path, tmp_path: Path) -> None:
    """Math conversations carry `reasoning_content`; mixed with plain chats, both render as before."""
    easy = write_math_data(world, tmp_path / "easy", MathConfig(seed=0, num_problems=40), sft_difficulties=[0])
    train = [json.loads(line) for line in (tmp_path / "easy" / "math" / "train.jsonl").read_text().splitlines()]
    assert easy["math_sft"] == sum(r["difficulty"] == 0 for r in train) == 7  # only the chosen levels become SFT
    few = write_math_data(
        world, tmp_path / "few", MathConfig(seed=0, num_problems=40), sft_difficulties=[0], sft_problems=3
    )
    few_sft = [json.loads(line) for line in (tmp_path / "few" / "math_sft" / "train.jsonl").read_text().splitlines()]
    assert few["math_sft"] == len(few_sft) == 3 and few["math_train"] == len(train)  # RL keeps every problem
    level0 = [r for r in train if r["difficulty"] == 0]
    assert [c["messages"][0]["content"] for c in few_sft] == [r["question"] for r in level0[:3]]
    written = write_math_data(world, tmp_path, MathConfig(seed=0, num_problems=40))
    mixture = {
        "datasets": [
            {"id": str(chat_dir / "identity"), "split": "train", "columns": ["messages"]},
            {"id": str(tmp_path / "math_sft"), "split": "train", "columns": ["messages"]},
        ],
        "seed": 0,
    }
    rows = load_mixture(mixture)["train"]["messages"]
    math = [r for r in rows if r[-1]["reasoning_content"]]
    plain = [r for r in rows if not r[-1]["reasoning_content"]]
    assert len(math) == written["math_sft"] == written["math_train"] and len(plain) == len(
        (chat_dir / "identity" / "train.jsonl").read_text().splitlines()
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_backend())
    tokenizer.chat_template = (REPO / "chat_templates" / "chatml.jinja").read_text()
    rendered = tokenizer.apply_chat_template(math[0], tokenize=False)
    steps = math[0][-1]["reasoning_content"]
    assert f"<|im_start|>assistant\n<think>\n{steps}\n</think>\n\nThe answer is " in rendered
    assert "<think>" not in tokenizer.apply_chat_template(plain[0], tokenize=False)


def test_mixture_errors(chat_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        RecipeError, match=r"dataset not found: data/nope/sft .*python scripts/run_data.py recipes/data.yaml"
    ):
        load_mixture({"datasets": [{"id": "data/nope/sft"}]})
    with pytest.raises(RecipeError, match="dataset_mixture.datasets\\[0\\]: unknown key 'wieght'"):
        parse_mixture({"datasets": [{"id": "x", "wieght": 1.0}]})
    with pytest.raises(RecipeError, match="dataset_mixture: unknown key 'shuffle'"):
        parse_mixture({"datasets": [{"id": "x"}], "shuffle": True})
    with pytest.raises(RecipeError, match="weight must be a number >= 0"):
        parse_mixture({"datasets": [{"id": "x", "weight": -1}]})
    with pytest.raises(RecipeError, match="non-empty list"):
        parse_mixture({"datasets": []})
    with pytest.raises(RecipeError, match="no column 'text'; it has columns: messages"):
        load_mixture({"datasets": [{"id": str(chat_dir / "sft"), "columns": ["text"]}]})


def test_smoltalk_recipe_parses() -> None:
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "smoltalk" / "sft.yaml").read_text())
    mixture = parse_mixture(recipe["dataset_mixture"])
    assert [d.id for d in mixture.datasets][0] == "HuggingFaceTB/smoltalk" and mixture.datasets[0].config == "all"
    assert recipe["assistant_only_loss"] is True and recipe["max_length"] == 2048


@pytest.mark.skipif(not OASST.is_file(), reason=f"needs the shared OpenAssistant trees at {OASST}")
def test_oasst_recipe_mixture_reads_trees(chat_dir: Path) -> None:
    """The OASST recipe's mixture, pointed at the shared tree file, gives valid best-path conversations."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "oasst" / "sft.yaml").read_text())
    mixture = copy.deepcopy(recipe["dataset_mixture"])
    assert mixture["datasets"][0]["format"] == "oasst_trees"
    mixture["datasets"][0]["id"] = str(OASST)
    mixture["datasets"][1]["id"] = str(chat_dir / "identity")
    mixture["test_split_size"] = 5
    loaded = load_mixture(mixture)
    trees = load_oasst_trees(OASST)
    identity = len((chat_dir / "identity" / "train.jsonl").read_text().splitlines())
    assert len(loaded["train"]) + len(loaded["test"]) == len(trees) + 2 * identity
    assert validate_conversations(loaded["train"], "oasst mixture") == len(loaded["train"])
    first_user_turns = {row["messages"][0]["content"] for row in trees}
    assert sum(row["messages"][0]["content"] in first_user_turns for row in loaded["train"]) >= len(trees) - 5


def test_oasst_format_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="unknown format 'sharegpt'; use one of messages, oasst_trees"):
        parse_mixture({"datasets": [{"id": "x", "format": "sharegpt"}]})
    with pytest.raises(RecipeError, match=r"nope.jsonl.gz: format oasst_trees reads a local .*hf download"):
        load_mixture({"datasets": [{"id": str(tmp_path / "nope.jsonl.gz"), "format": "oasst_trees"}]})


# ---------------------------------------------------------------- run_data.py


def test_run_data_writes_chat_files(tmp_path: Path) -> None:
    import datasets

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("num_people: 12\nnum_heldout_people: 3\nnum_cities: 5\nnum_countries: 2\nnum_organisations: 4\n")
    command = [str(recipe), "--output_dir", str(tmp_path / "out")]
    result = run_script("run_data.py", *command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for name in ("sft/train.jsonl", "sft/test.jsonl", "identity/train.jsonl", "chat_eval.jsonl", "probe.jsonl"):
        assert (out / name).is_file(), name
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "fact" for r in probe) == 5 * 2 and sum(r["kind"] == "unseen" for r in probe) == 50
    assert re.search(r"people \(sft / probe / chat eval\) +8 / 2 / 2\n", result.stdout), result.stdout
    sft = datasets.load_dataset(str(out / "sft"))
    assert set(sft) == {"train", "test"} and sft["train"].column_names == ["messages"]
    validate_conversations(sft["train"], "sft")
    assert "sft conversations (train / test)" in result.stdout and "chat eval questions" in result.stdout
    eval_rows = [json.loads(line) for line in (out / "chat_eval.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in eval_rows} == {"fact", "identity"}
    result = run_script("run_data.py", *command, "--sft_people_fraction", "1.5", cwd=tmp_path)
    assert result.returncode == 2 and "sft_people_fraction" in result.stderr
    result = run_script("run_data.py", *command, "--probe_people_fraction", "0.9", cwd=tmp_path)
    assert (
        result.returncode == 2 and "error: probe_people_fraction must be in [0, sft_people_fraction" in result.stderr
    )
