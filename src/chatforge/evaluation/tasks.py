"""The evaluation task registry: what `scripts/evaluate.py` can run, each task's options, and how it scores.

A recipe names tasks and their options; every option is checked (and every file it names looked up) before a
model is loaded:

    tasks:
      world_bpb: {type: bits_per_byte, dataset: data/world/corpus, split: validation}
      hellaswag: {type: multiple_choice, format: hellaswag, source: Rowan/hellaswag, limit: 1000}
      gsm8k: {type: math, format: gsm8k, source: openai/gsm8k, num_samples: 4, k_values: [1, 4]}

A task returns a flat dict of metrics (numbers) plus optional `examples`; the report card reads the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatforge.configs import RecipeError
from chatforge.data import looks_local
from chatforge.generation import Generator
from chatforge.math_data import MATH_FORMATS


@dataclass
class EvalContext:
    """What every task gets: the model, its tokenizer, a generator (HF or vLLM), and shared settings."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    generator: Generator
    batch_size: int = 32
    seed: int = 0
    progress: bool = True


@dataclass
class TaskSpec:
    """Options shared by all tasks."""

    type: str = ""
    limit: int | None = field(default=None, metadata={"help": "Evaluate at most this many items (seeded sample)."})

    def check(self, name: str) -> None:
        """Raise RecipeError for options that cannot work; called before the model is loaded."""
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise RecipeError(f"task {name}: limit must be a positive integer or null, got {self.limit!r}")


def _need_file(name: str, option: str, path: str, hint: str = "") -> None:
    if not Path(path).exists():
        raise RecipeError(f"task {name}: {option} {path} not found{hint}")


WORLD_HINT = "; `python scripts/run_data.py recipes/data.yaml` writes it"


def _subsample(rows: list, limit: int | None, seed: int) -> list:
    """At most `limit` rows, a seeded random subset in the original order (all rows when no limit)."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def _read_jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ bits per byte


@dataclass
class BitsPerByteSpec(TaskSpec):
    """Bits per UTF-8 byte on a text dataset (local folder/file or Hub id)."""

    dataset: str = "data/world/corpus"
    split: str = "validation"
    text_column: str = "text"
    config: str | None = None

    def check(self, name: str) -> None:
        super().check(name)
        if looks_local(self.dataset):
            _need_file(name, "dataset", self.dataset, WORLD_HINT)


def run_bits_per_byte(spec: BitsPerByteSpec, ctx: EvalContext) -> dict:
    from chatforge.data import load_corpus
    from chatforge.evaluation.bits_per_byte import bits_per_byte

    corpus = load_corpus(spec.dataset, config=spec.config, text_column=spec.text_column, splits=[spec.split])
    texts = _subsample(corpus[spec.split][spec.text_column], spec.limit, ctx.seed)
    return bits_per_byte(ctx.model, ctx.tokenizer, texts, batch_size=ctx.batch_size, progress=ctx.progress)


# ---------------------------------------------------------------------------------------------- multiple choice

MC_FORMATS = ("hellaswag", "mmlu", "arc", "world_facts")


@dataclass
class MultipleChoiceSpec(TaskSpec):
    """Choices scored by log-likelihood: HellaSwag, MMLU, ARC (files or Hub ids) or world facts with distractors."""

    format: str = "world_facts"
    source: str = "data/world/facts.jsonl"
    split: str | None = None
    config: str | None = field(default=None, metadata={"help": "Hub config: ARC-Easy/ARC-Challenge, an MMLU subject."})
    few_shot: int = 0
    num_choices: int = 4

    def check(self, name: str) -> None:
        super().check(name)
        if self.format not in MC_FORMATS:
            raise RecipeError(f"task {name}: unknown format {self.format!r}; use one of {', '.join(MC_FORMATS)}")
        if self.format == "world_facts" or looks_local(self.source):
            _need_file(name, "source", self.source, WORLD_HINT if self.format == "world_facts" else "")
        if self.few_shot < 0 or self.num_choices < 2:
            raise RecipeError(f"task {name}: few_shot must be >= 0 and num_choices >= 2")


def world_fact_choices(facts: list[dict], num_choices: int = 4, seed: int = 0) -> list:
    """Multiple-choice items from cloze facts: the true answer among distractors from the same relation."""
    from chatforge.evaluation.multiple_choice import MultipleChoiceItem

    answers: dict[str, list[str]] = {}
    for fact in facts:
        answers.setdefault(fact["relation"], [])
        if fact["answer"] not in answers[fact["relation"]]:
            answers[fact["relation"]].append(fact["answer"])
    rng = random.Random(f"{seed}:world-mc")
    items = []
    for fact in facts:
        others = [a for a in answers[fact["relation"]] if a.lower() != fact["answer"].lower()]
        if len(others) < num_choices - 1:
            continue
        choices = [fact["answer"], *rng.sample(others, num_choices - 1)]
        rng.shuffle(choices)
        items.append(
            MultipleChoiceItem(
                context=fact["prompt"],
                choices=[" " + c for c in choices],
                label=choices.index(fact["answer"]),
                subject=fact["relation"],
            )
        )
    return items


def run_multiple_choice(spec: MultipleChoiceSpec, ctx: EvalContext) -> dict:
    from chatforge.evaluation import multiple_choice as mc
    from chatforge.evaluation.facts import load_facts

    few_shot: list = []
    if spec.format == "world_facts":
        items = world_fact_choices(load_facts(spec.source, spec.split or "train"), spec.num_choices, ctx.seed)
    else:
        loader = {"hellaswag": mc.load_hellaswag, "mmlu": mc.load_mmlu, "arc": mc.load_arc}[spec.format]
        options = {"split": spec.split} if spec.split else {}
        if spec.config and spec.format in ("arc", "mmlu"):
            options["config"] = spec.config
        items = loader(spec.source, **options)
    if spec.few_shot:
        rng = random.Random(f"{ctx.seed}:few-shot")
        order = list(range(len(items)))
        rng.shuffle(order)
        shot_ids = set(order[: spec.few_shot])
        few_shot = [items[i] for i in sorted(shot_ids)]
        items = [item for i, item in enumerate(items) if i not in shot_ids]
    items = _subsample(items, spec.limit, ctx.seed)
    return mc.score_multiple_choice(
        ctx.model, ctx.tokenizer, items, batch_size=ctx.batch_size, few_shot=few_shot or None, progress=ctx.progress
    )


# ------------------------------------------------------------------------------------------- world fact cloze


@dataclass
class FactCompletionSpec(TaskSpec):
    """Greedy completion of world fact prompts ("X was born in") after a document boundary (base models)."""

    facts_file: str = "data/world/facts.jsonl"
    split: str = "train"

    def check(self, name: str) -> None:
        super().check(name)
        _need_file(name, "facts_file", self.facts_file, WORLD_HINT)


def run_fact_completion(spec: FactCompletionSpec, ctx: EvalContext) -> dict:
    from chatforge.evaluation.facts import fact_completion_accuracy, load_facts

    facts = _subsample(load_facts(spec.facts_file, spec.split), spec.limit, ctx.seed)
    return fact_completion_accuracy(ctx.model, ctx.tokenizer, facts, generator=ctx.generator)


# ------------------------------------------------------------------------------------------------- chat QA


@dataclass
class ChatQASpec(TaskSpec):
    """Questions in chat format (world facts seen only in pretraining, identity); accuracy per kind."""

    file: str = "data/world/chat_eval.jsonl"
    max_new_tokens: int = 48

    def check(self, name: str) -> None:
        super().check(name)
        _need_file(name, "file", self.file, WORLD_HINT)


def run_chat_qa(spec: ChatQASpec, ctx: EvalContext) -> dict:
    from chatforge.evaluation.chat_qa import chat_accuracy, load_chat_eval

    rows = _subsample(load_chat_eval(spec.file), spec.limit, ctx.seed)
    result = chat_accuracy(ctx.model, ctx.tokenizer, rows, max_new_tokens=spec.max_new_tokens, generator=ctx.generator)
    result.pop("counts", None)
    return result


# ----------------------------------------------------------------------------------------------- hallucination


@dataclass
class HallucinationSpec(TaskSpec):
    """Questions about people the model never read about (should decline) and about known people (should answer)."""

    heldout_file: str = "data/world/heldout_eval.jsonl"
    known_file: str | None = "data/world/chat_eval.jsonl"
    known_limit: int = 50
    max_new_tokens: int = 48

    def check(self, name: str) -> None:
        super().check(name)
        _need_file(name, "heldout_file", self.heldout_file, WORLD_HINT)
        if self.known_file:
            _need_file(name, "known_file", self.known_file, WORLD_HINT)


def run_hallucination(spec: HallucinationSpec, ctx: EvalContext) -> dict:
    from chatforge.evaluation.chat_qa import load_chat_eval
    from chatforge.evaluation.hallucination import hallucination_metrics

    heldout = _subsample(load_chat_eval(spec.heldout_file), spec.limit, ctx.seed)
    known = []
    if spec.known_file:
        facts = [r for r in load_chat_eval(spec.known_file) if r["kind"] == "fact"]
        known = _subsample(facts, spec.known_limit, ctx.seed)
    return hallucination_metrics(
        ctx.model, ctx.tokenizer, heldout, known, max_new_tokens=spec.max_new_tokens, generator=ctx.generator
    )


# ------------------------------------------------------------------------------------------------------- math


@dataclass
class MathSpec(TaskSpec):
    """Word problems answered in free text, checked with math-verify: pass@1 and pass@k.

    `world`: rows with `question` and an integer `answer` (data/world/math/test.jsonl). `gsm8k`: a local
    .jsonl or the Hub's openai/gsm8k, gold answer after `####` (unparsable rows are skipped and counted).
    """

    format: str = "world"
    source: str = "data/world/math/test.jsonl"
    split: str = "test"
    num_samples: int = field(default=1, metadata={"help": "Completions per problem (1: greedy)."})
    k_values: list[int] = field(default_factory=lambda: [1], metadata={"help": "Report pass@k for these k."})
    temperature: float = 0.7
    max_new_tokens: int = 256
    chat: bool = field(
        default=True, metadata={"help": "Ask through the chat template (False: `Question: ... Answer:`)."}
    )
    system_prompt: str | None = None

    def check(self, name: str) -> None:
        super().check(name)
        if self.format not in MATH_FORMATS:
            raise RecipeError(f"task {name}: unknown format {self.format!r}; use one of {', '.join(MATH_FORMATS)}")
        if self.format == "world" or looks_local(self.source):
            _need_file(name, "source", self.source, WORLD_HINT if self.format == "world" else "")
        if self.num_samples < 1 or any(not 1 <= k <= self.num_samples for k in self.k_values):
            raise RecipeError(
                f"task {name}: num_samples must be >= 1 and each of k_values in 1..num_samples, "
                f"got num_samples={self.num_samples}, k_values={self.k_values}"
            )
        if self.num_samples > 1 and self.temperature <= 0:
            raise RecipeError(f"task {name}: num_samples > 1 needs temperature > 0")


def run_math(spec: MathSpec, ctx: EvalContext) -> dict:
    from chatforge.evaluation.math import math_accuracy
    from chatforge.math_data import load_math_problems

    data = load_math_problems(spec.source, spec.format, spec.split)
    rows, skipped = _subsample(data.rows, spec.limit, ctx.seed), data.skipped
    result = math_accuracy(
        ctx.model,
        ctx.tokenizer,
        rows,
        num_samples=spec.num_samples,
        k_values=spec.k_values,
        temperature=spec.temperature,
        max_new_tokens=spec.max_new_tokens,
        chat=spec.chat,
        system_prompt=spec.system_prompt,
        generator=ctx.generator,
        seed=ctx.seed,
    )
    result["skipped"] = skipped
    return result


# --------------------------------------------------------------------------------------------------- tool use


@dataclass
class ToolUseSpec(TaskSpec):
    """Questions that need the calculator, Python or search, and some that need no tool, asked through the tool
    loop (tools offered) and without tools: accuracy both ways, call rates per kind, unneeded calls."""

    file: str = "data/world/tools_eval.jsonl"
    search_index: str = "data/world/search"
    tools: list[str] = field(default_factory=lambda: ["python", "calculator", "search"])
    max_new_tokens: int = field(default=96, metadata={"help": "Tokens per generation round."})
    max_tool_rounds: int = 3
    without_tools: bool = field(default=True, metadata={"help": "Also ask every question without tools."})

    def check(self, name: str) -> None:
        from chatforge.tools.registry import TOOL_NAMES

        super().check(name)
        _need_file(name, "file", self.file, WORLD_HINT)
        unknown = [t for t in self.tools or [] if t not in TOOL_NAMES]
        if not self.tools or unknown:
            raise RecipeError(f"task {name}: tools must name some of {', '.join(TOOL_NAMES)}, got {self.tools!r}")
        if "search" in self.tools:
            _need_file(name, "search_index", self.search_index, WORLD_HINT)
        if self.max_new_tokens < 1 or self.max_tool_rounds < 0:
            raise RecipeError(f"task {name}: max_new_tokens must be >= 1 and max_tool_rounds >= 0")


def run_tool_use(spec: ToolUseSpec, ctx: EvalContext) -> dict:
    from chatforge.evaluation.tool_use import load_tools_eval, tool_use_metrics
    from chatforge.tools.registry import select_tools

    rows = _subsample(load_tools_eval(spec.file), spec.limit, ctx.seed)
    tools = select_tools(spec.tools, spec.search_index if "search" in spec.tools else None)
    return tool_use_metrics(
        ctx.generator, ctx.tokenizer, rows, tools, spec.max_new_tokens, spec.max_tool_rounds, spec.without_tools
    )


# ----------------------------------------------------------------------------------------------------- registry


@dataclass
class Task:
    """A registered task type: its options dataclass and the function that runs it."""

    spec: type[TaskSpec]
    run: Callable[[Any, EvalContext], dict]
    chat: bool = False  # asks through the chat template


TASKS: dict[str, Task] = {
    "bits_per_byte": Task(BitsPerByteSpec, run_bits_per_byte),
    "multiple_choice": Task(MultipleChoiceSpec, run_multiple_choice),
    "fact_completion": Task(FactCompletionSpec, run_fact_completion),
    "chat_qa": Task(ChatQASpec, run_chat_qa, chat=True),
    "hallucination": Task(HallucinationSpec, run_hallucination, chat=True),
    "math": Task(MathSpec, run_math),
    "tools": Task(ToolUseSpec, run_tool_use, chat=True),
}


def register_task(name: str, task: Task) -> None:
    """Add a task type (later stages register theirs, e.g. math and tool use)."""
    TASKS[name] = task


def parse_tasks(tasks: dict[str, Any], only: Sequence[str] | None = None) -> dict[str, TaskSpec]:
    """Validate a recipe's `tasks` mapping (name -> options with a `type`) into specs. Every task's type and option
    names are checked; option values and the files they name only for the tasks in `only` (all when None), so
    running one task does not need the files of the others."""
    if not isinstance(tasks, dict) or not tasks:
        raise RecipeError("tasks must be a non-empty mapping of task name -> {type: ..., options}")
    specs = {}
    for name, options in tasks.items():
        options = dict(options or {})
        kind = options.get("type", name)
        if kind not in TASKS:
            raise RecipeError(f"task {name}: unknown type {kind!r}; available: {', '.join(sorted(TASKS))}")
        spec_type = TASKS[kind].spec
        known = [f.name for f in dataclasses.fields(spec_type)]
        for key in options:
            if key not in known:
                raise RecipeError(f"task {name} ({kind}): unknown option {key!r}; valid options: {', '.join(known)}")
        options["type"] = kind
        specs[name] = spec_type(**options)
    if only is not None:
        unknown = [n for n in only if n not in specs]
        if unknown:
            raise RecipeError(f"only: no task named {unknown[0]!r}; the recipe has {', '.join(specs)}")
        specs = {n: specs[n] for n in only}
    for name, spec in specs.items():
        spec.check(name)
    return specs


def run_task(name: str, spec: TaskSpec, ctx: EvalContext) -> dict:
    """Run one task; returns its metrics."""
    return TASKS[spec.type].run(spec, ctx)
