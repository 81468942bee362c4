"""Knowledge probing for factuality: the probe's decisions follow what a real (tiny) model knows, its training rows
decline what it does not know, a short SFT on them makes the model decline questions about people it never learned
about while it keeps answering those it knows, and bad input fails before the model loads."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMALL, run_script
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
from trl import ModelConfig

from chatforge.chat_data import validate_conversations
from chatforge.configs import RecipeError, parse_recipe
from chatforge.evaluation.chat_qa import chat_replies, reply_contains
from chatforge.evaluation.hallucination import declines, hallucination_metrics
from chatforge.factuality import ProbeConfig, decide, is_right, probe
from chatforge.mixtures import load_mixture, parse_mixture
from chatforge.sft import ChatSFTConfig, SFTScriptArguments, train
from chatforge.tokenizer import load_chat_template, save_tokenizer, train_tokenizer
from chatforge.world import Judge, World
from chatforge.world.chat import (
    IDK_REPLIES,
    ChatData,
    ChatDataConfig,
    build_chat_data,
    chat_eval_rows,
    fact_answer,
    fact_question,
    heldout_eval_rows,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# Measured (2 cores, one thread): the knowledge SFT takes ~19 s and leaves greedy accuracy 1.0 on the known people's
# facts; the probe takes ~1 s; the factuality SFT ~11 s and moves the hallucination rate on never-learned people
# from 1.00 to 0.16-0.18 (two init seeds) with known accuracy still 1.0.
KNOW_STEPS = 400
FACTUALITY_STEPS = 200


@dataclass
class Probed:
    """A tiny chat model that learned the facts of half the probe people, and the probe's outputs for it."""

    world: World
    data: ChatData
    known: set[str]  # probe people whose facts the model was trained on
    chat: Path  # the model folder
    probe_file: Path
    probe_dir: Path
    metrics: dict
    records: list[dict]


def tiny_sft(model: Path, dataset: Path, output_dir: Path, steps: int, learning_rate: float) -> dict:
    """chatforge's SFT stage on a folder of `messages` rows, a constant learning rate, no eval or checkpoints."""
    script_args = SFTScriptArguments(dataset_name=str(dataset), dataset_test_split=None, chat_eval_file=None)
    training_args = ChatSFTConfig(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16, max_length=128,
        learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0, logging_steps=50,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_pin_memory=False,
    )  # fmt: skip
    return train(script_args, training_args, ModelConfig(model_name_or_path=str(model)))[1]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Probed:
    """Train a tiny Qwen3 from scratch on QA about half of the small world's probe people (20 conversations per
    fact), then probe it on every probe question. No system prompts: with this 800-token vocabulary the default one
    is ~100 tokens, which a 128-token model would need far longer to learn around."""
    root = tmp_path_factory.mktemp("factuality")
    world = World.generate(SMALL)
    chat_data = build_chat_data(world, ChatDataConfig(system_prompt_fraction=0.0, probe_unseen_people=30))
    known = set(chat_data.probe_people[::2])
    rng = random.Random(0)
    facts = [f for f in world.facts if f.subject in known]
    lessons = [
        {"messages": [{"role": "user", "content": fact_question(f, rng)}, {"role": "assistant", "content": a}]}
        for _ in range(20)
        for f in facts
        for a in [fact_answer(f, rng)]
    ]
    write_jsonl(lessons, root / "knowledge" / "train.jsonl")
    template = load_chat_template(REPO / "chat_templates" / "chatml.jinja")
    tokenizer = train_tokenizer([d.text for d in world.documents], vocab_size=800)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(root / "base")
    save_tokenizer(tokenizer, root / "base", template)
    tiny_sft(root / "base", root / "knowledge", root / "chat", KNOW_STEPS, 3e-3)
    probe_file = write_jsonl(chat_data.probe, root / "probe.jsonl")
    config = ProbeConfig(
        model_name_or_path=str(root / "chat"), probe_file=str(probe_file), output_dir=str(root / "probe"),
        progress=False,
    )  # fmt: skip
    metrics = probe(config)
    records = [json.loads(line) for line in (root / "probe" / "probe.jsonl").read_text().splitlines()]
    return Probed(world, chat_data, known, root / "chat", probe_file, root / "probe", metrics, records)


def test_probe_decisions_follow_what_the_model_knows(probed: Probed) -> None:
    facts = [r for r in probed.records if r["kind"] == "fact"]
    assert len(facts) == 5 * len(probed.data.probe_people) == 40
    model = AutoModelForCausalLM.from_pretrained(probed.chat)
    tokenizer = AutoTokenizer.from_pretrained(probed.chat)
    greedy = chat_replies(model, tokenizer, [r["messages"] for r in facts])
    greedy_right = [reply_contains(reply, r["answer"]) for r, reply in zip(facts, greedy)]
    known = [r["subject"] in probed.known for r in facts]
    # The model knows the facts it was taught and (nearly) none of the others, by its greedy replies.
    assert sum(ok for ok, k in zip(greedy_right, known) if k) / sum(known) >= 0.9
    assert sum(ok for ok, k in zip(greedy_right, known) if not k) / (len(known) - sum(known)) <= 0.3
    decisions = Counter((r["subject"] in probed.known, r["decision"]) for r in facts)
    assert decisions[True, "keep"] >= 0.9 * sum(known)  # known facts kept
    assert decisions[False, "idk"] >= 0.75 * (len(known) - sum(known))  # unknown ones: "I don't know"
    # The decisions follow what this model gets right (its greedy reply), not who was in the training data: an
    # unknown person's fact that it answers anyway (say a shared employer) is kept, as it should be.
    for decision, want in (("keep", True), ("idk", False)):
        agree = [ok == want for r, ok in zip(facts, greedy_right) if r["decision"] == decision]
        assert sum(agree) >= 0.9 * len(agree), decision
    config = ProbeConfig()
    for r in probed.records:
        assert len(r["samples"]) == 4 and r["right"] == [is_right(r, s) for s in r["samples"]]
        assert r["decision"] == decide(sum(r["right"]), 4, config)
    unseen = [r for r in probed.records if r["kind"] == "unseen"]
    assert len(unseen) == 30 and all(r["decision"] == "idk" for r in unseen)  # it never declines, yet
    metrics = probed.metrics
    assert metrics["unseen_hallucination_rate"] == 1.0 and metrics["probe_decline_rate"] == 0.0
    assert metrics["probe_accuracy"] == pytest.approx(sum(r["num_right"] for r in facts) / (4 * len(facts)))
    assert Counter(metrics["decisions"]["fact"]) == Counter(r["decision"] for r in facts)
    assert sum(sum(v[d] for d in ("idk", "keep", "mixed")) for v in metrics["per_relation"].values()) == len(facts)


def test_training_rows_decline_what_the_model_does_not_know(probed: Probed) -> None:
    rows = [json.loads(line) for line in (probed.probe_dir / "train.jsonl").read_text().splitlines()]
    assert validate_conversations(rows, "train.jsonl") == len(rows) == probed.metrics["train_rows"]
    expected = [
        {"messages": [*r["messages"], {"role": "assistant", "content": r["train_reply"]}]}
        for r in probed.records
        if r["train_reply"] is not None
    ]
    assert rows == expected
    judge = Judge(probed.world)
    declined = set()
    for r in probed.records:
        reply = r["train_reply"]
        if r["kind"] == "unseen" or r["decision"] == "idk":
            assert declines(reply) and r["subject"] in reply, reply
            assert r["kind"] == "unseen" or judge.score(r, reply).declined, reply
            declined.add(reply.replace(r["subject"], "{s}"))
        elif r["decision"] == "keep":
            assert reply_contains(reply, r["answer"]) and not declines(reply), reply
        else:
            assert reply is None
    assert len(declined) >= 4  # several phrasings
    declining = [r for r in probed.records if r["kind"] == "unseen" or r["decision"] == "idk"]
    assert probed.metrics["idk_rows"] == len(declining)
    # Loadable as a dataset of the SFT mixture, as recipes/factuality.yaml names it.
    mixture = load_mixture({"datasets": [{"id": str(probed.probe_dir), "split": "train", "columns": ["messages"]}]})
    loaded = sorted(json.dumps(m) for m in mixture["train"]["messages"])  # shuffled by the mixture
    assert loaded == sorted(json.dumps(r["messages"]) for r in rows)


def test_sft_on_the_probe_rows_lowers_hallucination(probed: Probed, tmp_path: Path) -> None:
    """A short SFT on the probe's rows: the model now declines questions about people it never learned about
    (held-out people and the chat-eval people, in no training row) and still answers the people it knows."""
    world, data = probed.world, probed.data
    eval_people = [p for p in world.train_people if p.name in data.eval_people]
    never_learned = heldout_eval_rows(world, 0.0) + [
        r for r in chat_eval_rows(world, eval_people, 0.0) if r["kind"] == "fact"
    ]
    known_rows = [r for r in data.probe if r["subject"] in probed.known]

    def measure(folder: Path) -> dict:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        return hallucination_metrics(model, tokenizer, never_learned, known_rows)

    before = measure(probed.chat)
    tiny_sft(probed.chat, probed.probe_dir, tmp_path / "factuality", FACTUALITY_STEPS, 1e-3)
    after = measure(tmp_path / "factuality")
    print(f"\nhallucination rate {before['hallucination_rate']:.2f} -> {after['hallucination_rate']:.2f}, "
          f"known accuracy {before['known_accuracy']:.2f} -> {after['known_accuracy']:.2f}")  # fmt: skip
    assert before["hallucination_rate"] >= 0.9 and before["known_accuracy"] >= 0.9
    assert after["hallucination_rate"] <= min(0.5, before["hallucination_rate"] - 0.4), after["examples"]
    assert after["known_accuracy"] >= 0.8 and after["known_decline_rate"] <= 0.2


def test_idk_replies_decline_for_every_judge() -> None:
    world = World.generate(SMALL)
    row = heldout_eval_rows(world)[0]
    judge = Judge(world)
    for template in IDK_REPLIES:
        reply = template.format(s=row["subject"])
        assert declines(reply), reply
        verdict = judge.score(row, reply)
        assert verdict.declined and verdict.correct and not verdict.wrong, reply


def test_bad_input_fails_before_the_model_loads(probed: Probed, tmp_path: Path) -> None:
    def fails(match: str, **overrides) -> None:
        settings = {"model_name_or_path": str(probed.chat), "probe_file": str(probed.probe_file)}
        settings["output_dir"] = str(tmp_path / "out")
        with pytest.raises(RecipeError, match=match):
            probe(ProbeConfig(**{**settings, **overrides}))
        assert not (tmp_path / "out").exists()

    fails(f"probe file not found: {tmp_path}/nope.jsonl; `python scripts/run_data.py", probe_file=str(tmp_path / "nope.jsonl"))  # fmt: skip
    fails(f"chat model not found: {tmp_path}/sft; train it first", model_name_or_path=str(tmp_path / "sft"))
    good = {"messages": [{"role": "user", "content": "Where was Ann Vole born?"}], "kind": "fact", "answer": "Lorvik"}
    good["subject"] = "Ann Vole"
    cases = [
        ({k: v for k, v in good.items() if k != "messages"}, "row 1: needs `messages`"),
        ({**good, "answer": None}, "row 1: a fact question needs `answer`"),
        ({**good, "kind": "rumour"}, "row 1: unknown kind 'rumour'; kinds are fact, unseen"),
        (
            {**good, "messages": [*good["messages"], {"role": "assistant", "content": "Hi"}]},
            "row 1: `messages` must end with the user",
        ),
        ({**good, "subject": ""}, "row 1: needs `subject`"),
    ]
    for bad, message in cases:
        path = write_jsonl([good, bad], tmp_path / "bad.jsonl")
        fails(f"{path}: {message}".replace("(", r"\(").replace("[", r"\["), probe_file=str(path))
    (tmp_path / "broken.jsonl").write_text(json.dumps(good) + "\n{oops\n")
    fails("broken.jsonl: line 2 is not JSON", probe_file=str(tmp_path / "broken.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    fails("empty.jsonl: no questions", probe_file=str(tmp_path / "empty.jsonl"))
    for overrides, message in [
        ({"num_samples": 0}, "num_samples must be >= 1, got 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"max_correct_for_idk": 4}, r"max_correct_for_idk must be in \[0, num_samples=4\), got 4"),
        ({"min_correct_to_keep": 0.25, "max_correct_for_idk": 1}, "min_correct_to_keep x num_samples must exceed"),
    ]:
        with pytest.raises(RecipeError, match=message):
            ProbeConfig(**overrides)


def test_run_probe_script_and_its_recipe(probed: Probed, tmp_path: Path) -> None:
    args = ["--model_name_or_path", str(probed.chat), "--probe_file", str(probed.probe_file)]
    args += ["--output_dir", str(tmp_path / "out"), "--max_questions", "6", "--num_samples", "2"]
    args += ["--progress", "false"]
    result = run_script("run_probe.py", str(REPO / "recipes" / "probe.yaml"), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_fact_questions"] == 6 and metrics["num_samples"] == 2 and "decisions: {" in result.stdout
    assert len((tmp_path / "out" / "probe.jsonl").read_text().splitlines()) == 6
    # use_vllm with a vLLM that does not import (as with a mismatched torchvision) names the extra to install
    broken = tmp_path / "site" / "vllm"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('torchvision::nms does not exist')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(broken.parent)}
    command = [sys.executable, str(REPO / "scripts" / "run_probe.py"), str(REPO / "recipes" / "probe.yaml"), *args]
    result = subprocess.run([*command, "--use_vllm", "true"], capture_output=True, text=True, env=env)
    line = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert result.returncode == 2 and line, result.stderr[-2000:]
    assert "use_vllm: vLLM is not installed (or does not import); `pip install -e .[vllm]`" in line[0]


def test_factuality_recipe_continues_sft_on_the_probe_rows() -> None:
    """recipes/factuality.yaml parses, starts from the probed model, and mixes the probe's rows with a share of the
    SFT recipe's own datasets."""
    script_args, training_args, model_args = parse_recipe(
        [SFTScriptArguments, ChatSFTConfig, ModelConfig], [str(REPO / "recipes" / "factuality.yaml")]
    )
    probe_recipe = parse_recipe([ProbeConfig], [str(REPO / "recipes" / "probe.yaml")])[0]
    assert model_args.model_name_or_path == probe_recipe.model_name_or_path == "outputs/sft"
    ids = [d.id for d in parse_mixture(script_args.dataset_mixture).datasets]
    sft_recipe = parse_recipe([SFTScriptArguments, ChatSFTConfig, ModelConfig], [str(REPO / "recipes" / "sft.yaml")])
    assert ids[0] == probe_recipe.output_dir  # outputs/probe
    assert set(ids[1:]) <= {d["id"] for d in sft_recipe[0].dataset_mixture["datasets"]}
    assert training_args.output_dir == "outputs/factuality"
    assert training_args.learning_rate < sft_recipe[1].learning_rate
    assert script_args.replay_dataset == sft_recipe[0].replay_dataset and training_args.assistant_only_loss
