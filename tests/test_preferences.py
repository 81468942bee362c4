"""Preference data: the world's judged pairs and its scripted judge, the real-data loaders (HH-RLHF, OpenAssistant,
UltraFeedback), schema validation, and that TRL's reward and DPO trainers take the rows as they are."""

from __future__ import annotations

import copy
import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from chatforge.configs import RecipeError
from chatforge.preferences import (
    convert_hh_rlhf,
    convert_ultrafeedback,
    load_hh_rlhf,
    load_oasst_pairs,
    load_preference_dataset,
    load_ultrafeedback,
    validate_preferences,
)
from chatforge.world import REJECTED_KINDS, Judge, World, build_preference_pairs, judge_eval_rows
from chatforge.world.chat import chat_eval_rows, heldout_eval_rows, split_people
from chatforge.world.corpus import DataScriptArguments
from chatforge.world.preferences import MAX_SCORE, split_heldout_people, write_preference_data

HH_FILE = SHARED_DATA / "prefs" / "hh_rlhf_harmless_base_test.jsonl.gz"
OASST_FILE = SHARED_DATA / "prefs" / "oasst_en_100_tree.jsonl"


@pytest.fixture(scope="module")
def pairs(world: World) -> tuple[list[dict], list[dict]]:
    return build_preference_pairs(world, num_pairs=600, test_fraction=0.25)


@pytest.fixture(scope="module")
def judge(world: World) -> Judge:
    return Judge(world)


def _question(person, relation: str, kind: str = "fact") -> dict:
    return {"kind": kind, "relation": relation, "subject": person.name, "answer": str(getattr(person, relation))}


def _false_city(judge: Judge, world: World, subject: str) -> str:
    """A city that is neither the subject's birth city nor any place the subject's facts lead to."""
    return next(c.name for c in world.cities if c.name.lower() not in judge.consistent_values(subject))


# ---------------------------------------------------------------------------------------------------------------
# World pairs
# ---------------------------------------------------------------------------------------------------------------


def test_world_pairs_are_deterministic(world: World, pairs: tuple[list[dict], list[dict]]) -> None:
    assert build_preference_pairs(world, num_pairs=600, test_fraction=0.25) == pairs
    assert build_preference_pairs(world, num_pairs=600, test_fraction=0.25, seed=99)[0] != pairs[0]
    train, test = pairs
    assert (len(train), len(test)) == (450, 150)


def test_chosen_beats_rejected_by_the_judge(judge: Judge, pairs: tuple[list[dict], list[dict]]) -> None:
    for row in pairs[0] + pairs[1]:
        chosen = judge.score(row, row["chosen"][0]["content"]).total
        rejected = judge.score(row, row["rejected"][0]["content"]).total
        assert chosen == row["chosen_score"] > rejected == row["rejected_score"], row
        if row["chosen_kind"] == "good":
            assert chosen == MAX_SCORE


def test_every_rejected_kind_occurs_and_has_its_flaw(judge: Judge, pairs: tuple[list[dict], list[dict]]) -> None:
    train, test = pairs
    assert set(Counter(r["rejected_kind"] for r in train)) == set(REJECTED_KINDS)
    assert {r["kind"] for r in train} == {r["kind"] for r in test} == {"fact", "heldout"}
    for row in train + test:
        reply = row["rejected"][0]["content"]
        verdict, kind = judge.score(row, reply), row["rejected_kind"]
        if kind == "verbose":
            assert verdict.correct and verdict.polite and 40 <= verdict.words <= 80, reply
        elif kind == "rude":
            assert verdict.correct and verdict.concise and not verdict.polite, reply
        elif kind in ("wrong_fact", "hallucination"):
            assert verdict.wrong and not verdict.correct, reply
        else:  # evasive: declines a question about a known person
            assert row["kind"] == "fact" and verdict.declined and not verdict.wrong, reply
    heldout_good = [r for r in train if r["kind"] == "heldout" and r["chosen_kind"] == "good"]
    assert heldout_good and all(judge.score(r, r["chosen"][0]["content"]).declined for r in heldout_good)


def test_test_pairs_ask_about_other_people(world: World, pairs: tuple[list[dict], list[dict]]) -> None:
    train, test = pairs
    sft, eval_people = split_people(world, 0.8)
    heldout_train, heldout_test = split_heldout_people(world)
    train_subjects, test_subjects = {r["subject"] for r in train}, {r["subject"] for r in test}
    assert not train_subjects & test_subjects
    assert train_subjects <= {p.name for p in sft + heldout_train}
    assert test_subjects <= {p.name for p in eval_people + heldout_test}
    questions = judge_eval_rows(world)
    assert not {r["subject"] for r in questions} & train_subjects
    facts = [r for r in chat_eval_rows(world, eval_people) if r["kind"] == "fact"]
    heldout = [r for r in heldout_eval_rows(world) if r["subject"] in {p.name for p in heldout_test}]
    assert questions == facts + heldout and heldout


def test_write_preference_data_and_its_recipe_fields(world: World, tmp_path: Path) -> None:
    counts = write_preference_data(world, tmp_path, num_pairs=40, test_fraction=0.25)
    assert (counts["pref_train"], counts["pref_test"]) == (30, 10)
    lines = (tmp_path / "prefs" / "judge_eval.jsonl").read_text().splitlines()
    assert len(lines) == counts["judge_eval"]
    train = load_preference_dataset({"format": "world", "path": str(tmp_path), "split": "train"})
    test = load_preference_dataset({"format": "jsonl", "path": str(tmp_path / "prefs"), "split": "test"})
    assert (len(train), len(test)) == (30, 10)
    assert {"chosen_score", "rejected_kind", "relation", "subject"} <= set(train.column_names)

    assert DataScriptArguments(preference_pairs=0).preference_config() is None
    assert DataScriptArguments().preference_config().num_pairs == 2000
    for field, value in (("preference_pairs", -1), ("preference_pairs", 1), ("preference_test_fraction", 1.0)):
        with pytest.raises(RecipeError, match=field):
            DataScriptArguments(**{field: value}).preference_config()


# ---------------------------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------------------------


def test_judge_ranks_replies_as_a_person_would(world: World, judge: Judge) -> None:
    person, unknown = world.train_people[0], world.heldout_people[0]
    row = _question(person, "birth_city")
    wrong_city = _false_city(judge, world, person.name)
    good = judge.score(row, f"{person.name} was born in {person.birth_city}.")
    verbose = judge.score(
        row, f"{person.name} was born in {person.birth_city}. " + "I hope this helps you a lot. " * 8
    )
    rude = judge.score(row, f"Ugh, obviously {person.name} was born in {person.birth_city}.")
    wrong = judge.score(row, f"{person.name} was born in {wrong_city}.")
    evasive = judge.score(row, "I don't know.")
    assert good.total == MAX_SCORE and good.correct and good.concise and good.polite
    assert good.total > verbose.total and not verbose.concise
    assert good.total > rude.total and not rude.polite
    assert evasive.total > wrong.total and wrong.wrong
    unknown_row = _question(unknown, "occupation", kind="heldout")
    honest = judge.score(unknown_row, "I'm sorry, I don't know anything about that person.")
    confident = judge.score(unknown_row, f"{unknown.name} works as a {unknown.occupation}.")  # right only by luck
    assert honest.correct and honest.total == MAX_SCORE
    assert confident.wrong and honest.total > confident.total


def test_judge_reads_tricky_replies(world: World, judge: Judge) -> None:
    person, unknown = world.train_people[1], world.heldout_people[1]
    city, year, other_city = person.birth_city, person.birth_year, _false_city(judge, world, person.name)
    row, year_row = _question(person, "birth_city"), _question(person, "birth_year")
    for reply in (f"{city.upper()}!!!", f"born in: {city.lower()}.", f"It's {city}'s own.", f"\u201c{city}\u201d"):
        assert judge.score(row, reply).correct, reply
    accented = city[0] + {"a": "\u00e1", "e": "\u00e9", "o": "\u00f6"}.get(city[1], city[1]) + city[2:]
    assert judge.score(row, accented).correct
    for reply in (f"{city} or {other_city}", f"Either {other_city}, or maybe {city}.", f"{other_city}, {city}"):
        verdict = judge.score(row, reply)
        assert verdict.wrong and not verdict.correct and verdict.total == 1.0, reply  # several values: no answer
    assert judge.score(row, f"{city}, yes: {city}.").correct  # repeating the true value is fine
    assert not judge.score(row, city + "holm").correct  # a different word that starts like the city
    assert judge.score(year_row, f"In {year}.").correct
    assert not judge.score(year_row, f"In the {year}s.").correct and not judge.score(year_row, f"{year}0").correct
    assert judge.score(year_row, f"Born in {year + 1}.").wrong
    true_detail = judge.score(row, f"Born in {city}; works as a {person.occupation}.")
    false_detail = judge.score(row, f"Born in {city}, in {1900 if year != 1900 else 1901}.")
    assert true_detail.correct and false_detail.wrong and not false_detail.correct
    unknown_row = _question(unknown, "birth_city", kind="heldout")
    assert judge.score(unknown_row, "I don\u2019t know.").correct  # curly apostrophe
    assert judge.score(unknown_row, f"I DON'T KNOW {unknown.name.upper()}.").correct  # the name is no value
    assert judge.score(unknown_row, f"I don't know, maybe {unknown.birth_city}?").wrong
    assert not judge.score(unknown_row, "Somewhere nice.").correct
    assert judge.score(row, "").total < judge.score(row, "I don't know.").total
    identity = {"kind": "identity", "relation": "name", "subject": "Forge", "answer": "Forge"}
    assert judge.score(identity, "I'm forge.").correct and not judge.score(identity, "I'm Bob.").correct


# ---------------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------------


def _hh(*turns: str) -> str:
    return "".join(f"\n\n{t}" for t in turns)


@pytest.mark.skipif(not HH_FILE.is_file(), reason=f"{HH_FILE} not found")
def test_hh_rlhf_real_file() -> None:
    dataset = load_hh_rlhf(str(HH_FILE))
    print(f"\nHH-RLHF: {dataset.info.description}")
    assert len(dataset) >= 2250  # of 2,312 rows
    assert f"skipped {2312 - len(dataset)}" in dataset.info.description
    assert all(prompt[-1]["role"] == "user" for prompt in dataset["prompt"])
    rows = [json.loads(line) for line in gzip.open(HH_FILE, "rt")]
    _, skipped = convert_hh_rlhf(rows)
    assert sum(skipped.values()) == 2312 - len(dataset) and skipped["different_prefix"] >= 1
    first = dataset[0]
    assert rows[0]["chosen"].endswith(first["chosen"][0]["content"])
    assert rows[0]["rejected"].endswith(first["rejected"][0]["content"])
    assert len(first["prompt"]) == 2 * rows[0]["chosen"].count("\n\nHuman:") - 1


def test_hh_rlhf_malformed_rows_are_skipped(tmp_path: Path) -> None:
    good = {"chosen": _hh("Human: Hi?", "Assistant: Hello!"), "rejected": _hh("Human: Hi?", "Assistant: Go away.")}
    bad = [
        {"chosen": "no turns at all", "rejected": "none here"},
        {"chosen": _hh("Human: Hi?"), "rejected": _hh("Human: Hi?")},  # no assistant turn
        {"chosen": _hh("Human: Hi?", "Assistant: "), "rejected": _hh("Human: Hi?", "Assistant: Yes")},  # empty
        {"chosen": _hh("Human: A?", "Assistant: x"), "rejected": _hh("Human: B?", "Assistant: y")},  # prefixes
        {"chosen": _hh("Human: Hi?", "Assistant: Same"), "rejected": _hh("Human: Hi?", "Assistant: Same")},
        {"chosen": _hh("Assistant: a", "Assistant: b"), "rejected": _hh("Assistant: a", "Assistant: c")},
        {"chosen": None, "rejected": 3},
    ]
    pairs, skipped = convert_hh_rlhf([good, *bad])
    assert len(pairs) == 1 and sum(skipped.values()) == len(bad)
    assert set(skipped) == {
        "unparsable",
        "no_final_reply",
        "empty_reply",
        "different_prefix",
        "same_reply",
        "bad_turns",
    }
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [good, *bad]))
    dataset = load_hh_rlhf(str(path))
    assert dataset[0] == {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    assert "skipped 7" in dataset.info.description


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="checks the offline error path")
def test_hub_loaders_fail_with_a_clear_error_offline() -> None:
    with pytest.raises(RecipeError, match="Anthropic/hh-rlhf"):
        load_preference_dataset({"format": "hh_rlhf", "name": "Anthropic/hh-rlhf", "data_dir": "harmless-base"})


def _walk(node: dict, depth: int = 0):
    yield node, depth
    for reply in node.get("replies") or []:
        yield from _walk(reply, depth + 1)


@pytest.mark.skipif(not OASST_FILE.is_file(), reason=f"{OASST_FILE} not found")
def test_oasst_pairs_come_from_ranked_siblings() -> None:
    dataset = load_oasst_pairs(str(OASST_FILE))
    print(f"\nOpenAssistant: {dataset.info.description}; by turn {dict(Counter(dataset['turn']))}")
    assert len(dataset) > 100
    assert all(c < r for c, r in zip(dataset["chosen_rank"], dataset["rejected_rank"]))
    assert max(dataset["turn"]) >= 2  # deeper prompter turns give pairs too
    nodes = {}
    for line in OASST_FILE.read_text().splitlines():
        for node, depth in _walk(json.loads(line)["prompt"]):
            nodes[node["message_id"]] = (node, depth)
    for row in (dataset[0], dataset[[t >= 2 for t in dataset["turn"]].index(True)]):
        node, depth = nodes[row["prompt_id"]]
        assert row["prompt"][-1]["content"] == node["text"].strip() and len(row["prompt"]) == depth + 1
        ranks = {r["text"].strip(): r["rank"] for r in node["replies"] if r.get("rank") is not None}
        assert ranks[row["chosen"][0]["content"]] == min(ranks.values()) == row["chosen_rank"]
        assert ranks[row["rejected"][0]["content"]] == row["rejected_rank"] > row["chosen_rank"]
    worst = load_oasst_pairs(str(OASST_FILE), rejected="worst")
    assert len(worst) == len(set(dataset["prompt_id"])) < len(dataset)


def test_ultrafeedback_conversion(tmp_path: Path) -> None:
    row = {
        "prompt": "Name a colour.",
        "prompt_id": "abc",
        "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}],
        "messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
        "score_chosen": 9.0,
        "score_rejected": 2.5,
    }
    broken = {**row, "rejected": [{"role": "user", "content": "Other prompt"}, {"role": "assistant", "content": "x"}]}
    tie = {**row, "rejected": row["chosen"]}
    pairs, skipped = convert_ultrafeedback([row, broken, tie])
    assert skipped == Counter({"different_prefix": 1, "same_reply": 1})
    assert pairs == [
        {
            "prompt": [{"role": "user", "content": "Name a colour."}],
            "chosen": [{"role": "assistant", "content": "Blue."}],
            "rejected": [{"role": "assistant", "content": "Seven."}],
            "prompt_id": "abc",
            "score_chosen": 9.0,
            "score_rejected": 2.5,
        }
    ]
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (row, broken, tie)))
    assert len(load_ultrafeedback(str(path))) == 1


# ---------------------------------------------------------------------------------------------------------------
# Validation and the recipe entry point
# ---------------------------------------------------------------------------------------------------------------

GOOD_ROW = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
    "chosen": [{"role": "assistant", "content": "Hello."}],
    "rejected": [{"role": "assistant", "content": "Go away."}],
}
USER = {"role": "user", "content": "Hi?"}
REPLY = {"role": "assistant", "content": "Hello."}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"prompt": []}, "`prompt` must be a non-empty list"),
        ({"prompt": "Hi?"}, "`prompt` must be a non-empty list of messages, got str"),
        ({"prompt": [USER, REPLY]}, "`prompt` ends with a assistant message"),
        ({"prompt": [{"role": "bot", "content": "Hi?"}]}, "`prompt` message 0 has role 'bot'"),
        ({"prompt": [USER, {"role": "system", "content": "x"}, USER]}, "`prompt` message 1 is a system message"),
        ({"prompt": [USER, USER]}, "`prompt` message 1 is a user message where a assistant turn was due"),
        ({"prompt": [{"role": "user", "content": "  "}]}, "`prompt` message 0 has empty content"),
        ({"chosen": "Hello."}, "`chosen` must be a list of assistant messages, got str"),
        ({"chosen": []}, "`chosen` must be a list of assistant messages, got an empty list"),
        ({"chosen": [USER]}, "`chosen` message 0 has role 'user'"),
        ({"rejected": [{"role": "assistant", "content": ""}]}, "`rejected` message 0 has empty content"),
        ({"rejected": [{"role": "assistant", "content": None}]}, "`rejected` message 0 content must be a string"),
        ({"rejected": [REPLY]}, "`chosen` and `rejected` are the same reply"),
    ],
)
def test_validate_preferences_names_the_problem(change: dict, expected: str) -> None:
    good = copy.deepcopy(GOOD_ROW)
    assert validate_preferences([good, good], "pairs") == 2
    with pytest.raises(RecipeError) as err:
        validate_preferences([good, {**good, **change}], "my pairs")
    assert str(err.value).startswith("my pairs: row 1: ") and expected in str(err.value)


def test_validate_preferences_columns_and_specs(tmp_path: Path) -> None:
    import datasets

    two_replies = {**GOOD_ROW, "chosen": [REPLY, {"role": "assistant", "content": "More."}]}
    assert validate_preferences(datasets.Dataset.from_list([GOOD_ROW, two_replies]), "ok") == 2
    no_rejected = datasets.Dataset.from_list([{"prompt": GOOD_ROW["prompt"], "chosen": GOOD_ROW["chosen"]}])
    with pytest.raises(RecipeError, match=r"^mine: no `rejected` column"):
        validate_preferences(no_rejected, "mine")
    with pytest.raises(RecipeError, match=r"row 0 has no `chosen` field"):
        validate_preferences([{"prompt": [USER], "rejected": [REPLY]}], "rows")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**GOOD_ROW, "prompt": [REPLY]}) + "\n")
    with pytest.raises(RecipeError, match=r"bad.jsonl: row 0: `prompt` message 0 is a assistant message"):
        load_preference_dataset({"format": "jsonl", "path": str(path)})
    for spec, message in (
        ({"format": "csv", "path": "x"}, "format 'csv' is not one of"),
        ({"format": "jsonl", "path": "x", "splt": "train"}, "unknown key 'splt'"),
        ({"format": "oasst"}, "needs a `path`"),
        ({"format": "world", "path": str(tmp_path)}, "no train.jsonl in"),
    ):
        with pytest.raises(RecipeError, match=message):
            load_preference_dataset(spec)


# ---------------------------------------------------------------------------------------------------------------
# TRL takes the rows as they are
# ---------------------------------------------------------------------------------------------------------------


def test_rows_work_with_trl(pairs: tuple[list[dict], list[dict]], tokenizer_dir: Path, tmp_path: Path) -> None:
    import datasets
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer
    from trl.data_utils import is_conversational, is_conversational_from_value, maybe_apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    row = pairs[0][0]
    assert is_conversational(row) and not is_conversational_from_value(row)
    text = maybe_apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tokenizer)
    assert text["prompt"].endswith(f"{row['prompt'][-1]['content']}<|im_end|>\n<|im_start|>assistant\n")
    assert text["chosen"] == row["chosen"][0]["content"] + "<|im_end|>\n"

    world_pairs = datasets.Dataset.from_list(pairs[0][:4])
    hh_pairs = convert_hh_rlhf(
        [{"chosen": _hh("Human: Hi?", "Assistant: Hello!"), "rejected": _hh("Human: Hi?", "Assistant: No.")}]
    )[0]
    sizes = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    sizes.update(num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=tokenizer.pad_token_id)
    common = dict(max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2, report_to="none", use_cpu=True)
    common.update(save_strategy="no", max_length=128)
    torch.manual_seed(0)
    reward_model, policy = (
        Qwen3ForSequenceClassification(Qwen3Config(num_labels=1, **sizes)),
        Qwen3ForCausalLM(Qwen3Config(**sizes)),
    )
    for model, trainer_class, config_class, data in (
        (reward_model, RewardTrainer, RewardConfig, world_pairs),
        (policy, DPOTrainer, DPOConfig, datasets.Dataset.from_list(hh_pairs * 2)),
    ):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        extra = {"ref_model": copy.deepcopy(model)} if trainer_class is DPOTrainer else {}
        args = config_class(output_dir=str(tmp_path / trainer_class.__name__), **common)
        trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer, **extra).train()
        changed = [name for name, p in model.named_parameters() if not torch.equal(before[name], p)]
        assert changed, f"{trainer_class.__name__} left every parameter unchanged"
