"""Reward model and DPO stages on real TRL trainers: tiny models learn held-out preferences, bad recipes fail early.

The default recipes on the demo's chat model are the slow tests at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, one_line_error, run_script, run_script_here

from chatforge.configs import RecipeError
from chatforge.world import World, build_preference_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

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


def _spec(folder: Path, split: str) -> dict:
    return {"format": "jsonl", "path": str(folder), "split": split}


@pytest.fixture(scope="module")
def tiny_reward(surface_pairs: Path, tiny_chat_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A reward model trained on the surface pairs from the tiny chat model: (its folder, the stage's metrics)."""
    from trl import ModelConfig

    from chatforge.reward import ChatRewardConfig, RewardScriptArguments, train

    script_args = RewardScriptArguments(
        train_dataset=_spec(surface_pairs, "train"), test_dataset=_spec(surface_pairs, "test")
    )
    out = tmp_path_factory.mktemp("tiny_reward") / "reward"
    config = ChatRewardConfig(
        output_dir=str(out), max_steps=80, per_device_train_batch_size=16, learning_rate=3e-3,
        logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, max_length=160,
    )  # fmt: skip
    _, metrics = train(script_args, config, ModelConfig(model_name_or_path=str(tiny_chat_model)))
    return out, metrics


def test_reward_model_learns_held_out_preferences(surface_pairs: Path, tiny_reward: tuple) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from chatforge.preferences import load_preference_dataset
    from chatforge.reward import pairwise_accuracy

    folder, metrics = tiny_reward
    assert metrics["before_pairwise_accuracy"] < 0.75  # a random head
    assert metrics["pairwise_accuracy"] >= 0.9
    assert set(metrics["pairwise_accuracy_per_kind"]) == set(SURFACE_KINDS)
    # the saved folder is a standard sequence classifier that scores the same way
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    again = pairwise_accuracy(model, tokenizer, load_preference_dataset(_spec(surface_pairs, "test")))
    assert again["accuracy"] == pytest.approx(metrics["pairwise_accuracy"])
    card = (folder / "README.md").read_text()
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
        run_script("run_reward.py", "recipes/reward.yaml", "--model_name_or_path", str(tmp_path / "sft"), fresh=True)
    )
    assert "chat model not found" in missing and "run_sft.py" in missing
    no_data = one_line_error(
        run_script_here(
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


def _judge_file(world: World, folder: Path, count: int = 12) -> Path:
    from chatforge.world import judge_eval_rows

    path = folder / "judge_eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in judge_eval_rows(world)[:count]))
    return path


def _world_folder(world: World, folder: Path) -> Path:
    (folder / "world.json").write_text(json.dumps(world.to_dict()))
    return folder


@pytest.fixture(scope="module")
def vowel_reward(surface_pairs: Path, tiny_chat_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reward model for a preference a tiny random policy can learn in a few dozen steps: replies rich in vowels
    over replies of consonants (the policy only has to move probability towards some tokens)."""
    import random

    from trl import ModelConfig

    from chatforge.reward import ChatRewardConfig, RewardScriptArguments, train

    rng = random.Random(0)
    prompts = [json.loads(line)["prompt"] for line in (surface_pairs / "train.jsonl").read_text().splitlines()]

    def words(letters: str) -> str:
        return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(6))

    folder = tmp_path_factory.mktemp("vowel_prefs")
    rows = [
        {"prompt": p, "chosen": [{"role": "assistant", "content": words("aeiouae" + "lmn")}],
         "rejected": [{"role": "assistant", "content": words("bcdfghjkpqrstvwxz")}]}
        for p in prompts[:400]
    ]  # fmt: skip
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = folder / "reward"
    config = ChatRewardConfig(
        output_dir=str(out), max_steps=40, per_device_train_batch_size=16, learning_rate=3e-3,
        logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, max_length=160,
    )  # fmt: skip
    train(RewardScriptArguments(train_dataset=_spec(folder, "train")), config, ModelConfig(str(tiny_chat_model)))
    return out


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "ppo"])
def test_rlhf_raises_the_reward_model_s_score(
    algorithm: str, world: World, surface_pairs: Path, tiny_chat_model: Path, vowel_reward: Path, tmp_path: Path
) -> None:
    """The policy learns what the reward model likes; the judge's curve is recorded along the way."""
    from trl import ModelConfig

    from chatforge.rlhf import RLHFScriptArguments, config_class, train

    script_args = RLHFScriptArguments(
        algorithm=algorithm, reward_model_path=str(vowel_reward), train_dataset=_spec(surface_pairs, "train"),
        judge_eval_file=str(_judge_file(world, tmp_path)), world=str(_world_folder(world, tmp_path)),
        judge_every=10, max_train_prompts=64,
    )  # fmt: skip
    steps, length = (20, 8) if algorithm == "ppo" else (30, 16)
    common = dict(
        output_dir=str(tmp_path / "rlhf"), max_steps=steps, max_completion_length=length, learning_rate=3e-3,
        lr_scheduler_type="constant", logging_steps=5, save_strategy="no", report_to="none", disable_tqdm=True,
        seed=0,
    )  # fmt: skip
    if algorithm == "ppo":
        config = config_class("ppo")(**common, per_device_train_batch_size=16, init_kl_coef=0.01, adaptive_kl=False)
        key = "objective/scores"
    else:
        config = config_class(algorithm)(**common, per_device_train_batch_size=16, num_generations=4, beta=0.0)
        key = "reward"
    trainer, metrics = train(script_args, config, ModelConfig(model_name_or_path=str(tiny_chat_model)))
    scores = [h[key] for h in trainer.state.log_history if key in h]
    if algorithm != "ppo":  # PPO's own tests (test_ppo.py) show it raising a toy reward; here: the wiring
        assert sum(scores[-2:]) / 2 > sum(scores[:2]) / 2 + 0.5, scores
    else:
        assert len(scores) == steps // 5 and any("loss/value" in h for h in trainer.state.log_history)
    # the judge and the reward model scored held-out replies at the start, every 10 steps and at the end
    assert [c["step"] for c in metrics["judge_curve"]] == list(range(0, steps + 1, 10))
    if algorithm != "ppo":
        assert metrics["reward_model_score"] > metrics["before_reward_model_score"]
    assert 0.0 <= metrics["judge_score"] <= 3.0 and "fact_correct" in metrics["judge_curve"][0]
    out = tmp_path / "rlhf"
    assert (out / "rlhf_curves.png").stat().st_size > 0
    assert json.loads((out / "metrics.json").read_text())["algorithm"] == algorithm
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0  # the policy, not PPO's value model


def test_reward_hacking_is_detected_from_the_curve() -> None:
    from chatforge.rlhf import summarise_curve

    rising = [{"step": s, "judge_score": 1.0 + s / 100, "reward_model_score": s / 10} for s in (0, 10, 20)]
    assert not summarise_curve(rising)["reward_hacking"]
    hacked = [*rising, {"step": 30, "judge_score": 1.0, "reward_model_score": 5.0}]
    summary = summarise_curve(hacked)
    assert summary["reward_hacking"] and summary["best_judge_step"] == 20
    assert summary["before_judge_score"] == 1.0 and summary["reward_model_score"] == 5.0


def test_rlhf_recipes_fail_early(tmp_path: Path) -> None:
    from chatforge.rlhf import RLHFScriptArguments, recipe_algorithm

    with pytest.raises(RecipeError, match="algorithm: unknown 'ppo2'"):
        RLHFScriptArguments(algorithm="ppo2")
    assert recipe_algorithm(["recipes/rlhf.yaml"]) == "grpo"
    assert recipe_algorithm(["recipes/rlhf.yaml", "--algorithm", "rloo"]) == "rloo"
    bad = one_line_error(run_script("run_rlhf.py", "recipes/rlhf.yaml", "--algorithm", "ppo2", fresh=True))
    assert "algorithm: unknown 'ppo2'" in bad
    # a section's keys must belong to its algorithm's config: the error names the recipe and the section
    recipe = yaml.safe_load((REPO / "recipes" / "rlhf.yaml").read_text())
    recipe["ppo"]["num_generations"] = 8
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    wrong_key = one_line_error(run_script_here("run_rlhf.py", str(tmp_path / "bad.yaml"), "--algorithm", "ppo"))
    assert f"{tmp_path / 'bad.yaml'} (algorithm ppo): unknown key 'num_generations'" in wrong_key

    no_reward = one_line_error(
        run_script_here(
            "run_rlhf.py",
            "recipes/rlhf.yaml",
            "--model_name_or_path",
            str(REPO / "recipes"),
            "--reward_model_path",
            str(tmp_path / "reward"),
            "--output_dir",
            str(tmp_path / "rlhf"),
        )  # fmt: skip
    )
    assert "reward model not found" in no_reward and "run_reward.py" in no_reward
    assert not (tmp_path / "rlhf").exists()


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "ppo"])
def test_the_rlhf_recipe_switches_algorithm_with_its_section(algorithm: str) -> None:
    from trl import ModelConfig

    from chatforge.configs import parse_recipe
    from chatforge.rlhf import RLHFScriptArguments, config_class, resolve_rlhf_recipe

    chosen, args = resolve_rlhf_recipe(["recipes/rlhf.yaml", "--algorithm", algorithm, "--max_steps", "7"])
    script_args, training_args, _ = parse_recipe([RLHFScriptArguments, config_class(chosen), ModelConfig], args)
    section = yaml.safe_load((REPO / "recipes" / "rlhf.yaml").read_text())[algorithm]
    assert chosen == script_args.algorithm == algorithm
    assert (
        type(training_args).__name__
        == {"grpo": "ChatGRPOConfig", "rloo": "ChatRLOOConfig", "ppo": "PPOConfig"}[algorithm]
    )
    assert training_args.learning_rate == section["learning_rate"] and training_args.max_steps == 7  # CLI wins
    if algorithm == "ppo":
        assert training_args.init_kl_coef == section["init_kl_coef"] and training_args.num_ppo_epochs == 4
    else:
        assert training_args.num_generations == section["num_generations"] and training_args.beta == section["beta"]
