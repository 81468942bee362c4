"""Reward model and DPO stages on real TRL trainers: tiny models learn held-out preferences, bad recipes fail early.

The default recipes on the demo's chat model are the slow tests at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, one_line_error, run_script

from chatforge.configs import RecipeError
from chatforge.world import World, build_preference_pairs

SURFACE_KINDS = ("verbose", "rude")  # flaws a tiny model can see without knowing the world's facts


@pytest.fixture(scope="module")
def surface_pairs(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pairs whose rejected reply is padded or rude, train and test (other people) in prefs/{train,test}.jsonl."""
    train, test = build_preference_pairs(world, num_pairs=1200, test_fraction=0.25)
    folder = tmp_path_factory.mktemp("prefs")
    for split, rows in (("train", train), ("test", test)):
        kept = [r for r in rows if r["rejected_kind"] in SURFACE_KINDS and r["chosen_kind"] == "good"]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return folder


@pytest.fixture(scope="module")
def tiny_chat_model(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Qwen3 with the chat tokenizer, saved like an SFT output."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_chat")
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _spec(folder: Path, split: str) -> dict:
    return {"format": "jsonl", "path": str(folder), "split": split}


def test_reward_model_learns_held_out_preferences(surface_pairs: Path, tiny_chat_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import ModelConfig

    from chatforge.preferences import load_preference_dataset
    from chatforge.reward import ChatRewardConfig, RewardScriptArguments, pairwise_accuracy, train

    script_args = RewardScriptArguments(
        train_dataset=_spec(surface_pairs, "train"), test_dataset=_spec(surface_pairs, "test")
    )
    config = ChatRewardConfig(
        output_dir=str(tmp_path / "reward"), max_steps=80, per_device_train_batch_size=16, learning_rate=3e-3,
        logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, max_length=160,
    )  # fmt: skip
    _, metrics = train(script_args, config, ModelConfig(model_name_or_path=str(tiny_chat_model)))
    assert metrics["before_pairwise_accuracy"] < 0.75  # a random head
    assert metrics["pairwise_accuracy"] >= 0.9
    assert set(metrics["pairwise_accuracy_per_kind"]) == set(SURFACE_KINDS)
    # the saved folder is a standard sequence classifier that scores the same way
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "reward")
    again = pairwise_accuracy(model, tokenizer, load_preference_dataset(_spec(surface_pairs, "test")))
    assert again["accuracy"] == pytest.approx(metrics["pairwise_accuracy"])
    card = (tmp_path / "reward" / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card and "text-classification" in card


def test_dpo_learns_held_out_preferences(surface_pairs: Path, tiny_chat_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from chatforge.dpo import ChatDPOConfig, DPOScriptArguments, train

    script_args = DPOScriptArguments(
        train_dataset=_spec(surface_pairs, "train"), test_dataset=_spec(surface_pairs, "test"), judge_eval_file=None
    )
    config = ChatDPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=40, per_device_train_batch_size=16, learning_rate=3e-3,
        beta=0.1, logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, max_length=160,
    )  # fmt: skip
    trainer, metrics = train(script_args, config, ModelConfig(model_name_or_path=str(tiny_chat_model)))
    assert metrics["preference_accuracy"] >= 0.9 and metrics["reward_margin"] > 0
    # the reference stayed the starting model: the policy moved away from it
    start = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    moved = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), moved.parameters()))


def test_judge_scores_a_policy_s_own_replies(world: World, tiny_chat_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatforge.evaluation.judge import judge_policy
    from chatforge.world import Judge, judge_eval_rows

    rows = judge_eval_rows(world)[:8]
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    result = judge_policy(model, tokenizer, rows, Judge(world), max_new_tokens=8)
    replies = [example["reply"] for example in result["examples"]]
    expected = [Judge(world).score(row, reply).total for row, reply in zip(rows, replies)]
    assert [example["score"] for example in result["examples"]] == expected
    assert 0.0 <= result["judge_score"] <= 3.0 and result["correct"] <= 0.25  # random weights: mostly wrong


def test_bad_recipes_fail_before_training(tmp_path: Path, surface_pairs: Path) -> None:
    from chatforge.reward import RewardScriptArguments

    with pytest.raises(RecipeError, match="train_dataset must be a mapping with a `format`"):
        RewardScriptArguments(train_dataset={"path": "x"})
    with pytest.raises(RecipeError, match="test_dataset is not valid JSON"):
        RewardScriptArguments(train_dataset=_spec(surface_pairs, "train"), test_dataset="{nope")
    missing = one_line_error(
        run_script("run_reward.py", "recipes/reward.yaml", "--model_name_or_path", str(tmp_path / "sft"))
    )
    assert "chat model not found" in missing and "run_sft.py" in missing
    no_data = one_line_error(
        run_script(
            "run_dpo.py",
            "recipes/dpo.yaml",
            "--model_name_or_path",
            str(REPO / "recipes"),
            "--train_dataset",
            json.dumps(_spec(tmp_path, "train")),
            "--output_dir",
            str(tmp_path / "dpo"),
        )  # fmt: skip
    )
    assert "train" in no_data and str(tmp_path) in no_data
    assert not (tmp_path / "dpo").exists()
