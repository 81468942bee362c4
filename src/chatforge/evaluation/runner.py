"""Run a recipe's evaluation tasks on one model and write `eval_results.json`."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chatforge.configs import RecipeError, none_if_null
from chatforge.data import require_model
from chatforge.evaluation.tasks import EvalContext, TaskSpec, parse_tasks, run_task
from chatforge.generation import HFGenerator

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "hf", "vllm")


@dataclass
class EvalScriptArguments:
    """Which model to evaluate, on which tasks, and where the results go."""

    model_name_or_path: str = field(default="outputs/sft", metadata={"help": "A stage's output folder or a Hub id."})
    tasks: dict | str | None = field(
        default=None, metadata={"help": "Mapping task name -> {type, options} (JSON on the command line)."}
    )
    only: str | None = field(default=None, metadata={"help": "Comma-separated task names: run just these."})
    limit: int | None = field(
        default=None,
        metadata={
            "help": "At most this many items per task (a seeded sample; caps each task's own limit): a quick look."
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where eval_results.json goes (default: outputs/eval/<model folder name>)."}
    )
    backend: str = field(
        default="auto", metadata={"help": "Generation backend: hf, vllm, or auto (vLLM when installed and on a GPU)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Sequences per forward pass / generate call."})
    seed: int = field(default=0, metadata={"help": "Seed for subsampling (limit) and sampling."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self) -> None:
        none_if_null(self, "tasks", "only", "output_dir")
        if isinstance(self.tasks, str):
            try:
                self.tasks = json.loads(self.tasks)
            except json.JSONDecodeError as err:
                raise RecipeError(f"tasks is not valid JSON: {err}") from None
        if self.limit is not None and self.limit < 1:
            raise RecipeError(f"limit must be a positive integer or null, got {self.limit}")
        if self.backend not in BACKENDS:
            raise RecipeError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "vllm":
            from chatforge.vllm_backend import require_vllm

            require_vllm("backend vllm")

    def selected_tasks(self) -> dict[str, TaskSpec]:
        """The checked task specs, narrowed to `only` when given."""
        if not self.tasks:
            raise RecipeError("no tasks: give a recipe with a `tasks:` mapping (see recipes/eval.yaml)")
        only = [n.strip() for n in self.only.split(",") if n.strip()] if self.only else None
        specs = parse_tasks(self.tasks, only)
        if self.limit is not None:
            for spec in specs.values():
                spec.limit = min(spec.limit or self.limit, self.limit)
                if hasattr(spec, "known_limit"):  # the hallucination task's second question set
                    spec.known_limit = min(spec.known_limit or self.limit, self.limit)
        return specs

    def results_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("outputs") / "eval" / Path(self.model_name_or_path.rstrip("/")).name


def make_generator(backend: str, model, tokenizer, model_name_or_path: str, batch_size: int, seed: int = 0):
    """The generation backend: vLLM when asked for (or, with `auto`, when installed and a GPU is there),
    HF `generate` otherwise. On CPU `auto` keeps HF: vLLM's CPU build is slower than HF for small models."""
    from chatforge.vllm_backend import VLLMGenerator, VLLMSettings, vllm_available

    if backend == "vllm" or (backend == "auto" and model.device.type == "cuda" and vllm_available()):
        return VLLMGenerator(model_name_or_path, tokenizer, VLLMSettings(seed=seed))
    return HFGenerator(model, tokenizer, batch_size)


def earlier_results(path: Path, model: str) -> dict:
    """The results an earlier run wrote to `path` for the same model (empty otherwise): a run of some tasks
    (`--only`) updates those and keeps the others', so the report card of a finished pipeline stays whole."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(earlier, dict) or earlier.get("model") != model or not isinstance(earlier.get("tasks"), dict):
        if path.exists():
            logger.warning("%s holds results of another model or run; replacing them", path)
        return {}
    return earlier


def evaluate_model(args: EvalScriptArguments) -> dict:
    """Load the model, run each task, write eval_results.json (after every task, so a crash keeps the rest).

    Returns this run's results; the file also keeps the results of tasks an earlier run of the same model scored
    and this one did not run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    specs = args.selected_tasks()  # all recipe problems surface before the model loads
    require_model(
        args.model_name_or_path, "model", "a stage's output folder or a Hub id", "train it first (see README)"
    )
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path).to(device).eval()
    generator = make_generator(args.backend, model, tokenizer, args.model_name_or_path, args.batch_size, args.seed)
    ctx = EvalContext(model, tokenizer, generator, args.batch_size, args.seed, args.progress)
    out = args.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval_results.json"
    saved = earlier_results(path, args.model_name_or_path)
    kept = [name for name in saved.get("tasks", {}) if name not in specs]
    if kept:
        logger.info("%s: keeping the earlier results of %s", path, ", ".join(kept))
    results: dict = {
        "model": args.model_name_or_path,
        "backend": getattr(generator, "name", "hf"),
        "tasks": {},
        "seconds": {},
    }
    for name, spec in specs.items():
        start = time.perf_counter()
        logger.info("task %s (%s)", name, spec.type)
        results["tasks"][name] = run_task(name, spec, ctx)
        results["seconds"][name] = round(time.perf_counter() - start, 2)
        merged = {**results, "tasks": {**saved.get("tasks", {}), **results["tasks"]}}
        merged["seconds"] = {**saved.get("seconds", {}), **results["seconds"]}
        tmp = path.with_suffix(".json.tmp")  # written whole, then renamed: a crash never leaves half a file
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
        tmp.replace(path)
    return results
