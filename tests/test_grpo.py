"""GRPO on verifiable math: bad input fails fast and clearly; a short run with vLLM colocate rollouts trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, one_line_error, run_script

from chatforge.configs import RecipeError
from chatforge.grpo import GRPOScriptArguments, load_grpo_dataset
from chatforge.math_data import load_math_problems

RECIPE = str(REPO / "recipes" / "grpo.yaml")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dataset_from_world_problems_skips_and_counts_bad_answers(tmp_path: Path) -> None:
    rows = [
        {
            "question": "Ana had 3 apples and found 4 more. How many apples does she have?",
            "answer": 7,
            "difficulty": 1,
        },
        {"question": "Bo had 10 coins and lost 2. How many coins are left?", "answer": "8", "difficulty": 2},
        {"question": "What is the answer?", "answer": "seven"},  # not a number
        {"question": "", "answer": 3},  # no question
        {"question": "How many?", "answer": None},
    ]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    args = GRPOScriptArguments(dataset_name=str(path), system_prompt="Think, then answer.")
    dataset, skipped = load_grpo_dataset(args)
    assert skipped == 3 and len(dataset) == 2
    assert dataset[0]["prompt"] == [
        {"role": "system", "content": "Think, then answer."},
        {"role": "user", "content": rows[0]["question"]},
    ]
    assert dataset["answer"] == ["7", "8"]
    only_easy, _ = load_grpo_dataset(GRPOScriptArguments(dataset_name=str(path), difficulties=[1]))
    assert only_easy["answer"] == ["7"]


def test_dataset_from_the_real_gsm8k_file() -> None:
    gsm8k = SHARED_DATA / "math" / "gsm8k_train.jsonl"
    args = GRPOScriptArguments(dataset_name=str(gsm8k), dataset_format="gsm8k", max_train_problems=50)
    dataset, skipped = load_grpo_dataset(args)
    assert len(dataset) == 50 and skipped == 0
    raw = [json.loads(line) for line in gsm8k.read_text().splitlines()[:50]]
    assert [a.split("####")[-1].strip().replace(",", "") for a in (r["answer"] for r in raw)] == dataset["answer"]


def test_bad_input_fails_before_training(tmp_path: Path) -> None:
    no_answer = _write_jsonl(tmp_path / "q.jsonl", [{"question": "2 + 2?", "solution": "4"}])
    with pytest.raises(RecipeError, match=r"q.jsonl: missing column 'answer'; columns found: question, solution"):
        load_math_problems(no_answer, "world")
    with pytest.raises(RecipeError, match="dataset_format: unknown format 'math500'; use one of world, gsm8k"):
        GRPOScriptArguments(dataset_format="math500")
    with pytest.raises(RecipeError, match="difficulties must be a subset of 1, 2, 3, 4"):
        GRPOScriptArguments(difficulties=[5])
    all_bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "x?", "answer": "many"}])
    with pytest.raises(RecipeError, match=r"bad.jsonl: no usable problems \(skipped 1\)"):
        load_grpo_dataset(GRPOScriptArguments(dataset_name=str(all_bad)))

    missing = run_script("run_grpo.py", RECIPE, "--model_name_or_path", str(tmp_path / "sft"))
    assert f"model not found: {tmp_path}/sft; train the chat model first" in one_line_error(missing)
    typo = run_script("run_grpo.py", RECIPE, "--model_name_or_path", str(tmp_path), "--rewards", "accuracy", "fromat")
    assert "unknown reward 'fromat'" in one_line_error(typo)
    weights = run_script("run_grpo.py", RECIPE, "--model_name_or_path", str(tmp_path), "--reward_weights", "1.0")
    assert "reward_weights has 1 values for 2 rewards (accuracy, format)" in one_line_error(weights)


def test_use_vllm_without_a_working_vllm_names_the_extra(tmp_path: Path) -> None:
    broken = tmp_path / "site" / "vllm"  # an install that does not import, as with a mismatched torchvision
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('torchvision::nms does not exist')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(broken.parent)}
    command = [sys.executable, str(REPO / "scripts" / "run_grpo.py"), RECIPE, "--model_name_or_path", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    line = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert result.returncode == 2 and line, result.stderr[-2000:]
    assert "use_vllm: vLLM is not installed (or does not import); `pip install -e .[vllm]`" in line[0]
