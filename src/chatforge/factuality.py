"""Factuality by knowledge probing, the way Meta describes it for Llama 3: ask the chat model questions whose answers
are known, sample several replies to each, judge them against the truth, and turn what the model consistently gets
wrong into "I don't know" conversations (and what it consistently gets right into answers it keeps giving). A short
SFT on them (recipes/factuality.yaml) teaches the model to decline instead of inventing.

>>> metrics = probe(ProbeConfig(model_name_or_path="outputs/sft", probe_file="data/world/probe.jsonl"))
>>> metrics["probe_accuracy"], metrics["unseen_hallucination_rate"], metrics["idk_rows"]

Questions (rows of data/world/probe.jsonl) have `messages` (the prompt turns), `kind` and `answer`:
- kind "fact": a fact of a person seen in pretraining only; a sample is right when it contains `answer`;
- kind "unseen": a person who exists nowhere (`answer` null); a sample is right only when it declines.
Each question is then "idk" (at most `max_correct_for_idk` right samples), "keep" (a `min_correct_to_keep` share
right or more) or "mixed" (in between). Training rows: a decline naming the subject for "idk" fact questions, the
gold answer as a sentence for "keep" ones, nothing for "mixed" ones (the model half knows: neither target is
safe); an unseen question always gets a decline, since that is its one right reply.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from chatforge.configs import RecipeError, none_if_null
from chatforge.data import require_model
from chatforge.evaluation.chat_qa import reply_contains
from chatforge.evaluation.hallucination import declines
from chatforge.generation import Generator, HFGenerator, SamplingArguments, chat_stop_token_ids
from chatforge.world.chat import TEMPLATES, fact_answer, idk_reply
from chatforge.world.corpus import _write_jsonl  # one JSONL writer for the world's data files
from chatforge.world.entities import make_fact

logger = logging.getLogger(__name__)
KINDS = ("fact", "unseen")
DECISIONS = ("idk", "keep", "mixed")


@dataclass
class ProbeConfig:
    """Which model to probe on which questions, how to sample, and when a question becomes an "I don't know"."""

    model_name_or_path: str = field(
        default="outputs/sft", metadata={"help": "The chat model to probe (a stage's output folder or a Hub id)."}
    )
    probe_file: str = field(
        default="data/world/probe.jsonl",
        metadata={"help": "Questions: JSONL rows with messages, kind (fact or unseen) and answer (null for unseen)."},
    )
    output_dir: str = field(
        default="outputs/probe",
        metadata={"help": "Where train.jsonl (conversations), probe.jsonl (per question) and metrics.json go."},
    )
    num_samples: int = field(default=4, metadata={"help": "Replies sampled per question."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (> 0: the point is variety)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=50, metadata={"help": "Sample among the k likeliest tokens only (0: all of them)."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens per reply (a short sentence is enough)."})
    max_correct_for_idk: int = field(
        default=0,
        metadata={"help": "A question with at most this many right samples becomes an 'I don't know' conversation."},
    )
    min_correct_to_keep: float = field(
        default=0.75,
        metadata={
            "help": "A fact question with at least this share of right samples becomes a conversation with the gold "
            "answer; questions in between are left out."
        },
    )
    max_questions: int | None = field(
        default=None, metadata={"help": "Probe only the first N questions (None: all), for quick tries."}
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "Questions per generation call, each sampled num_samples times (vLLM: larger is faster)."},
    )
    use_vllm: bool = field(
        default=False, metadata={"help": "Sample with vLLM (`pip install -e .[vllm]`) instead of HF generate."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling and of the training replies' wording."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto (HF generation only)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar over the batches."})

    def __post_init__(self) -> None:
        none_if_null(self, "max_questions")
        checks = [
            (self.num_samples >= 1, "num_samples must be >= 1", self.num_samples),
            (self.temperature > 0, "temperature must be > 0 (the probe samples)", self.temperature),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]", self.top_p),
            (self.top_k >= 0, "top_k must be >= 0 (0: no limit)", self.top_k),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1", self.max_new_tokens),
            (
                0 <= self.max_correct_for_idk < self.num_samples,
                f"max_correct_for_idk must be in [0, num_samples={self.num_samples})",
                self.max_correct_for_idk,
            ),
            (0 < self.min_correct_to_keep <= 1, "min_correct_to_keep must be in (0, 1]", self.min_correct_to_keep),
            (
                self.min_correct_to_keep * self.num_samples > self.max_correct_for_idk,
                f"min_correct_to_keep x num_samples must exceed max_correct_for_idk={self.max_correct_for_idk}, or a "
                "question could be both kept and declined",
                self.min_correct_to_keep,
            ),
            (self.max_questions is None or self.max_questions >= 1, "max_questions must be >= 1", self.max_questions),
            (self.batch_size >= 1, "batch_size must be >= 1", self.batch_size),
        ]
        for ok, message, value in checks:
            if not ok:
                raise RecipeError(f"{message}, got {value}")


def load_probe_rows(path: str | Path, max_questions: int | None = None) -> list[dict[str, Any]]:
    """The probe's questions, checked: each has prompt `messages` ending with a user turn, a known `kind`, and an
    `answer` string for "fact" rows. Errors name the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(
            f"probe file not found: {path}; `python scripts/run_data.py recipes/data.yaml` writes data/world/probe.jsonl"
        )
    rows = []
    for index, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecipeError(f"{path}: line {index + 1} is not JSON ({err.msg})") from None
        rows.append(_check_row(row, f"{path}: row {len(rows)}"))
        if max_questions is not None and len(rows) >= max_questions:
            break
    if not rows:
        raise RecipeError(f"{path}: no questions")
    return rows


def _check_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise RecipeError(f"{where}: expected a JSON object, got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecipeError(f"{where}: needs `messages`, a non-empty list of prompt turns")
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise RecipeError(f"{where}: every message needs a role and a string content")
    if messages[-1].get("role") != "user":
        raise RecipeError(
            f"{where}: `messages` must end with the user's question, got role {messages[-1].get('role')!r}"
        )
    kind = row.get("kind", "fact")
    if kind not in KINDS:
        raise RecipeError(f"{where}: unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    if kind == "fact" and (not isinstance(row.get("answer"), str) or not row["answer"].strip()):
        raise RecipeError(f"{where}: a fact question needs `answer`, the string a right reply contains")
    if not isinstance(row.get("subject"), str) or not row["subject"].strip():
        raise RecipeError(f"{where}: needs `subject`, the name the 'I don't know' reply mentions")
    return {**row, "kind": kind, "relation": row.get("relation", "")}


def is_right(row: dict[str, Any], reply: str) -> bool:
    """A fact reply is right when it contains the answer; a reply about an unseen person only when it declines."""
    if row["kind"] == "unseen":
        return declines(reply)
    return reply_contains(reply, row["answer"])


def decide(num_right: int, num_samples: int, config: ProbeConfig) -> str:
    """The decision ("idk", "keep" or "mixed") for a question with `num_right` right samples of `num_samples`."""
    if num_right <= config.max_correct_for_idk:
        return "idk"
    if num_right >= config.min_correct_to_keep * num_samples:
        return "keep"
    return "mixed"


def training_reply(row: dict[str, Any], decision: str, rng: random.Random) -> str | None:
    """What the assistant should say to the question after the probe: a decline, the gold answer, or None (skip)."""
    if row["kind"] == "unseen" or decision == "idk":
        return idk_reply(row["subject"], rng)
    if decision == "keep":
        if row.get("relation") in TEMPLATES:
            return fact_answer(make_fact(row["subject"], row["relation"], row["answer"]), rng)
        return f"{row['answer']}."
    return None


def sample_replies(
    generator: Generator, tokenizer, rows: list[dict[str, Any]], config: ProbeConfig
) -> list[list[str]]:
    """`config.num_samples` sampled replies to each question, in batches (a progress bar over them)."""
    prompts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False) for r in rows]
    stop_ids = chat_stop_token_ids(tokenizer)
    replies: list[list[str]] = []
    starts = range(0, len(prompts), config.batch_size)
    for batch, start in enumerate(tqdm(starts, desc="probe", unit="batch", disable=not config.progress)):
        settings = SamplingArguments(
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
            num_samples=config.num_samples, seed=config.seed + batch,
        )  # fmt: skip
        out = generator(prompts[start : start + config.batch_size], settings, stop_token_ids=stop_ids)
        replies += [[s.strip() for s in samples] for samples in out]
    return replies


def judge_questions(
    rows: list[dict[str, Any]], replies: list[list[str]], config: ProbeConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-question records, training conversations) from the sampled replies."""
    rng = random.Random(f"{config.seed}:probe-train")
    records, train = [], []
    for row, samples in zip(rows, replies):
        right = [is_right(row, s) for s in samples]
        decision = decide(sum(right), len(samples), config)
        reply = training_reply(row, decision, rng)
        records.append(
            {
                **{k: row.get(k) for k in ("messages", "kind", "relation", "subject", "answer")},
                "samples": samples,
                "right": right,
                "num_right": sum(right),
                "decision": decision,
                "train_reply": reply,
            }
        )
        if reply is not None:
            train.append({"messages": [*row["messages"], {"role": "assistant", "content": reply}]})
    return records, train


def probe_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Sampled accuracy on fact questions, hallucination rate on unseen people, decisions per kind and relation."""
    facts = [r for r in records if r["kind"] == "fact"]
    unseen = [r for r in records if r["kind"] == "unseen"]
    metrics: dict[str, Any] = {"num_fact_questions": len(facts), "num_unseen_questions": len(unseen)}
    if facts:
        samples = [(s, ok) for r in facts for s, ok in zip(r["samples"], r["right"])]
        metrics["probe_accuracy"] = sum(ok for _, ok in samples) / len(samples)
        metrics["probe_decline_rate"] = sum(declines(s) for s, _ in samples) / len(samples)
    if unseen:
        samples = [ok for r in unseen for ok in r["right"]]
        metrics["unseen_hallucination_rate"] = 1 - sum(samples) / len(samples)
    metrics["idk_rows"] = sum(r["train_reply"] is not None and r["decision"] == "idk" for r in facts) + len(unseen)
    metrics["answer_rows"] = sum(r["train_reply"] is not None and r["decision"] == "keep" for r in facts)
    metrics["mixed_left_out"] = sum(r["train_reply"] is None for r in records)
    metrics["decisions"] = {
        kind: {d: sum(r["decision"] == d for r in records if r["kind"] == kind) for d in DECISIONS}
        for kind in KINDS
        if any(r["kind"] == kind for r in records)
    }
    per_relation: dict[str, Counter] = defaultdict(Counter)
    for r in facts:
        entry = per_relation[r["relation"]]
        entry["right"] += r["num_right"]
        entry["samples"] += len(r["samples"])
        entry[r["decision"]] += 1
    metrics["per_relation"] = {
        relation: {"accuracy": e["right"] / e["samples"], **{d: e[d] for d in DECISIONS}}
        for relation, e in sorted(per_relation.items())
    }
    metrics["examples"] = [
        {"question": r["messages"][-1]["content"], "sample": r["samples"][0], "decision": r["decision"]}
        for r in (facts[:2] + unseen[:2])
    ]
    return metrics


def make_generator(config: ProbeConfig, tokenizer) -> Generator:
    """vLLM when `use_vllm`, else HF generate on the model loaded from `model_name_or_path`."""
    if config.use_vllm:
        from chatforge.vllm_backend import VLLMGenerator, VLLMSettings

        return VLLMGenerator(config.model_name_or_path, tokenizer, VLLMSettings(seed=config.seed))
    from transformers import AutoModelForCausalLM

    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path).to(device).eval()
    return HFGenerator(model, tokenizer, config.batch_size)


def probe(config: ProbeConfig, generator: Generator | None = None) -> dict[str, Any]:
    """Probe the model on `config.probe_file`; write train.jsonl, probe.jsonl and metrics.json; return the metrics.

    Every input problem (file, rows, model folder, chat template, vLLM) is reported before the model loads.
    `generator` replaces the one `config` describes (e.g. one already built around a model in memory).
    """
    from transformers import AutoTokenizer

    start = time.perf_counter()
    rows = load_probe_rows(config.probe_file, config.max_questions)
    require_model(
        config.model_name_or_path, "chat model", "a chat model folder (e.g. outputs/sft)",
        "train it first with `python scripts/run_sft.py recipes/sft.yaml`",
    )  # fmt: skip
    if config.use_vllm and generator is None:
        from chatforge.vllm_backend import require_vllm

        require_vllm("use_vllm", "set use_vllm: false to sample with HF generate")
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    if not tokenizer.chat_template:
        raise RecipeError(f"{config.model_name_or_path} has no chat template; probe a chat model (e.g. outputs/sft)")
    kinds = Counter(r["kind"] for r in rows)
    logger.info(
        "probing %s: %d fact and %d unseen-person questions x %d samples at temperature %s",
        config.model_name_or_path, kinds["fact"], kinds["unseen"], config.num_samples, config.temperature,
    )  # fmt: skip
    generator = generator or make_generator(config, tokenizer)
    replies = sample_replies(generator, tokenizer, rows, config)
    records, train = judge_questions(rows, replies, config)
    metrics = probe_metrics(records)
    metrics.update(
        train_rows=len(train),
        num_samples=config.num_samples,
        temperature=config.temperature,
        model=config.model_name_or_path,
        backend=getattr(generator, "name", "hf"),
        seconds=round(time.perf_counter() - start, 1),
    )
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(train, out / "train.jsonl")
    _write_jsonl(records, out / "probe.jsonl")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info(
        "probe: accuracy %.3f (sampled), hallucination on unseen people %s; %d 'I don't know' rows, %d answer rows, "
        "%d mixed questions left out",
        metrics.get("probe_accuracy", float("nan")), _pct(metrics.get("unseen_hallucination_rate")),
        metrics["idk_rows"], metrics["answer_rows"], metrics["mixed_left_out"],
    )  # fmt: skip
    return metrics


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
