"""GRPO on verifiable problems: the chat model practises math and learns from its own checked attempts.

The data are word problems with numeric answers (the world's `math/` files or GSM8K), given to the model as
chat prompts; TRL's `GRPOTrainer` samples `num_generations` completions per prompt (with vLLM in colocate or
server mode, or HF `generate`), scores them with the rewards of `chatforge.rewards`, and raises the
likelihood of the better-than-average ones. Before and after training the model is scored on held-out
problems (pass@1 / pass@k, greedy accuracy, mean completion length), so the gain is a measurement.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig, ModelConfig, ScriptArguments

from chatforge.configs import DeviceDefaults, RecipeError, none_if_null
from chatforge.data import looks_local, require_model
from chatforge.distributed import gathered_weights, runs_generation_checks
from chatforge.evaluation.chat_qa import chat_accuracy, load_chat_eval
from chatforge.evaluation.math import math_accuracy, question_messages
from chatforge.generation import chat_stop_token_ids
from chatforge.hub import push_stage_output
from chatforge.math_data import MATH_FORMATS, load_math_problems
from chatforge.model_card import write_model_card
from chatforge.outputs import save_stage_folder, save_weights
from chatforge.plots import plot_curves
from chatforge.pretrain import resolve_checkpoint
from chatforge.rewards import REWARDS, get_reward_funcs
from chatforge.world.math import DIFFICULTIES

logger = logging.getLogger(__name__)

GRPO_FORMATS = (*MATH_FORMATS, "chat_qa")
EVAL_FORMATS = (*GRPO_FORMATS, "tools")


@dataclass
class GRPOScriptArguments(ScriptArguments):
    """Which problems to practise on, which rewards score them, and how to measure the result."""

    dataset_name: str | None = field(
        default="data/world/math", metadata={"help": "Folder with {split}.jsonl, a .jsonl file, or a Hub id."}
    )
    dataset_format: str = field(
        default="world",
        metadata={
            "help": f"How problems and gold answers are written: {', '.join(GRPO_FORMATS)} (chat_qa: rows with "
            "`messages`, the prompt turns, and `answer`, what a right reply names)."
        },
    )
    dataset_config: str | None = field(default="main", metadata={"help": "Hub config (GSM8K: main)."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt before each problem."})
    max_train_problems: int | None = field(default=None, metadata={"help": "Use at most this many problems."})
    difficulties: list[int] | None = field(
        default=None, metadata={"help": "World problems: train and evaluate only these difficulty levels (0-4)."}
    )
    rewards: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": f"Reward functions from chatforge.rewards ({', '.join(REWARDS)}); weights: reward_weights."},
    )
    reward_options: dict | str | None = field(
        default=None, metadata={"help": 'Options per reward, e.g. {"length": {"max_completion_length": 256}}.'}
    )
    eval_file: str | None = field(
        default="data/world/math/test.jsonl", metadata={"help": "Held-out problems scored before and after."}
    )
    eval_format: str = field(
        default="world",
        metadata={
            "help": f"Format of eval_file: {', '.join(EVAL_FORMATS)} (tools: rows of data/world/tools_eval.jsonl, "
            "answered through the tool loop with the recipe's tools)."
        },
    )
    eval_limit: int | None = field(default=200, metadata={"help": "Score at most this many held-out problems."})
    eval_num_samples: int = field(default=4, metadata={"help": "Samples per held-out problem, for pass@k."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the held-out eval."})
    eval_before_training: bool = field(default=True, metadata={"help": "Also score the starting model."})
    tools: list[str] | None = field(
        default=None,
        metadata={
            "help": "Tools the policy may call in its rollouts (python, calculator, search): TRL's tool loop runs each "
            "call and appends the result, which is left out of the loss; the reward reads the final reply."
        },
    )
    search_index: str | None = field(
        default=None,
        metadata={"help": "The search tool's index (a folder written by run_data.py: data/world/search)."},
    )

    def __post_init__(self) -> None:
        none_if_null(
            self,
            "dataset_config",
            "system_prompt",
            "eval_file",
            "difficulties",
            "reward_options",
            "tools",
            "search_index",
        )
        if isinstance(self.reward_options, str):
            try:
                self.reward_options = json.loads(self.reward_options)
            except json.JSONDecodeError as err:
                raise RecipeError(f"reward_options is not valid JSON: {err}") from None
        for name, value, formats in (
            ("dataset_format", self.dataset_format, GRPO_FORMATS),
            ("eval_format", self.eval_format, EVAL_FORMATS),
        ):
            if value not in formats:
                raise RecipeError(f"{name}: unknown format {value!r}; use one of {', '.join(formats)}")
        if self.eval_format == "tools" and not self.tools:
            raise RecipeError("eval_format: tools scores replies through the tool loop; name the `tools` as well")
        if self.eval_num_samples < 1:
            raise RecipeError(f"eval_num_samples must be >= 1, got {self.eval_num_samples}")
        if self.difficulties is not None and not set(self.difficulties) <= set(DIFFICULTIES):
            raise RecipeError(
                f"difficulties must be a subset of {', '.join(map(str, DIFFICULTIES))}; got {self.difficulties}"
            )


@dataclass
class ChatGRPOConfig(DeviceDefaults, GRPOConfig):
    """TRL's `GRPOConfig` with chatforge's defaults: bf16 only where supported, short chat completions."""

    output_dir: str = field(default="outputs/grpo", metadata={"help": "Where the model and checkpoints go."})


def check_model_path(name_or_path: str | None) -> str:
    """The starting model must exist; say what makes it."""
    return require_model(
        name_or_path,
        "model",
        "the SFT model (e.g. outputs/sft)",
        "train the chat model first with `python scripts/run_sft.py recipes/sft.yaml` (or run `make demo`)",
    )


def check_vllm(training_args: GRPOConfig) -> None:
    """`use_vllm` needs vLLM installed (and importable); name the extra to install."""
    if not training_args.use_vllm:
        return
    from chatforge.vllm_backend import require_vllm

    require_vllm("use_vllm", alternative="use_vllm: false")


def _at_difficulties(rows: list[dict], difficulties: list[int] | None) -> list[dict]:
    return rows if difficulties is None else [r for r in rows if r.get("difficulty") in difficulties]


def load_qa_rows(source: str, split: str) -> list[dict]:
    """chat_qa rows (`messages`, `answer`, `kind`) from a .jsonl file or a folder holding `{split}.jsonl`."""
    path = Path(source)
    if not path.exists():
        raise RecipeError(
            f"chat QA data not found: {source}; `python scripts/run_data.py recipes/data.yaml` writes it"
        )
    file = path if path.is_file() else path / f"{split}.jsonl"
    if not file.is_file():
        raise RecipeError(f"{path}: no {split}.jsonl in this folder")
    return load_chat_eval(file)


def load_grpo_dataset(script_args: GRPOScriptArguments) -> tuple[Dataset, int]:
    """Conversational prompts with their gold `answer`; also how many source rows were skipped as unusable."""
    if not script_args.dataset_name:
        raise RecipeError("dataset_name is not set; point it at problems (e.g. data/world/math)")
    if script_args.dataset_format == "chat_qa":
        rows, skipped = load_qa_rows(script_args.dataset_name, script_args.dataset_train_split), 0
        source = script_args.dataset_name
        prompts = [
            {"prompt": _with_system(r["messages"], script_args.system_prompt), "answer": str(r["answer"])}
            for r in rows
        ]
    else:
        data = load_math_problems(
            script_args.dataset_name,
            script_args.dataset_format,
            script_args.dataset_train_split,
            config_name=script_args.dataset_config or "main",
        )
        rows, skipped, source = _at_difficulties(data.rows, script_args.difficulties), data.skipped, data.source
        prompts = [
            {"prompt": question_messages(r["question"], script_args.system_prompt), "answer": str(r["answer"])}
            for r in rows
        ]
    if script_args.max_train_problems is not None:
        prompts = prompts[: script_args.max_train_problems]
    if not prompts:
        raise RecipeError(f"{source}: no usable problems (skipped {skipped}) after the recipe's filters")
    return Dataset.from_list(prompts), skipped


def _with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def load_rollout_tools(script_args: GRPOScriptArguments) -> dict | None:
    """The recipe's tools by name (checked, the search index loaded), or None without tools."""
    if not script_args.tools:
        return None
    from chatforge.tools.registry import select_tools

    return select_tools(script_args.tools, script_args.search_index)


def load_eval_problems(script_args: GRPOScriptArguments) -> list[dict] | None:
    if not script_args.eval_file:
        return None
    if script_args.eval_format == "tools":
        from chatforge.evaluation.tool_use import load_tools_eval

        rows = load_tools_eval(script_args.eval_file)
    elif script_args.eval_format == "chat_qa":
        rows = load_qa_rows(script_args.eval_file, "test")
    else:
        data = load_math_problems(script_args.eval_file, script_args.eval_format, "test")
        rows = _at_difficulties(data.rows, script_args.difficulties)
    rows = rows[: script_args.eval_limit] if script_args.eval_limit else rows
    return rows or None


def score_heldout(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    script_args: GRPOScriptArguments,
    max_new_tokens: int,
    seed: int,
    tools: dict | None = None,
) -> dict:
    """The held-out score of the eval format: math (score_math), chat QA (greedy accuracy per kind) or tool use
    (greedy, through the tool loop with `tools`: accuracy and call rates per kind)."""
    if script_args.eval_format == "tools":
        from chatforge.evaluation.tool_use import tool_use_metrics
        from chatforge.generation import HFGenerator

        scores = tool_use_metrics(
            HFGenerator(model, tokenizer), tokenizer, rows, tools, max_new_tokens, without_tools=False
        )
        result = {f"tools_{k}": v for k, v in scores.items() if isinstance(v, float)}
        result["tools_examples"] = [
            {"question": e["question"], "completion": e["reply"], "correct": e["ok"], "tools": e["tools_called"]}
            for examples in scores["examples"].values()
            for e in examples
        ]
        return result
    if script_args.eval_format != "chat_qa":
        return score_math(model, tokenizer, rows, script_args, max_new_tokens, seed)
    scores = chat_accuracy(model, tokenizer, rows, max_new_tokens=max_new_tokens)
    result = {f"qa_{k}": v for k, v in scores.items() if k.endswith("_accuracy")}
    result["qa_examples"] = [
        {"question": e["question"], "completion": e["reply"], "correct": e["ok"]}
        for examples in scores["examples"].values()
        for e in examples
    ]
    return result


def score_math(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[dict],
    script_args: GRPOScriptArguments,
    max_new_tokens: int,
    seed: int,
) -> dict:
    """Held-out math: sampled pass@1 / pass@k at the eval temperature, greedy accuracy, completion length."""
    k = script_args.eval_num_samples
    common = dict(max_new_tokens=max_new_tokens, system_prompt=script_args.system_prompt, seed=seed, chat=True)
    sampled = math_accuracy(
        model, tokenizer, problems, num_samples=k, k_values=sorted({1, k}), temperature=script_args.eval_temperature,
        **common,
    )  # fmt: skip
    greedy = math_accuracy(model, tokenizer, problems, num_samples=1, **common)
    result = {f"math_pass@{n}": sampled[f"pass@{n}"] for n in sorted({1, k})}
    result["math_greedy_accuracy"] = greedy["accuracy"]
    result["math_format_rate"] = greedy["answer_rate"]
    result["math_completion_tokens"] = sampled["mean_completion_tokens"]
    levels = sampled.get("per_difficulty") or {}
    if len(levels) > 1:  # several levels: how each moves (a gain on one can cost another)
        result.update({f"math_pass@1_level{level}": scores["pass@1"] for level, scores in levels.items()})
    result["math_examples"] = greedy["examples"][:3]
    return result


def train(
    script_args: GRPOScriptArguments,
    training_args: ChatGRPOConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[Any, dict]:
    """Practise on the problems with GRPO; save the model with before/after math scores and training curves."""
    model_path = check_model_path(model_args.model_name_or_path)
    reward_funcs = get_reward_funcs(script_args.rewards, **(script_args.reward_options or {}))
    if training_args.reward_weights is not None and len(training_args.reward_weights) != len(reward_funcs):
        raise RecipeError(
            f"reward_weights has {len(training_args.reward_weights)} values for {len(reward_funcs)} rewards "
            f"({', '.join(script_args.rewards)})"
        )
    train_dataset, skipped = load_grpo_dataset(script_args)
    eval_problems = load_eval_problems(script_args)
    tools = load_rollout_tools(script_args)
    check_vllm(training_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise RecipeError(f"{model_path} has no chat template; GRPO prompts are conversations (train SFT first)")
    transformers.set_seed(training_args.seed)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=model_args.dtype or "auto", attn_implementation=model_args.attn_implementation
    )
    max_new = training_args.max_completion_length
    metrics: dict = {"train_problems": len(train_dataset), "skipped_problems": skipped}
    if eval_problems and script_args.eval_before_training:
        with gathered_weights(model):  # ZeRO-3 loads the model partitioned; it has no engine yet
            before = score_heldout(model, tokenizer, eval_problems, script_args, max_new, training_args.seed, tools)
        metrics.update({f"before_{k}": v for k, v in before.items() if not k.endswith("examples")})
        logger.info("held-out scores before GRPO: %s", {k: v for k, v in metrics.items() if k.startswith("before")})

    from trl import GRPOTrainer  # imports vLLM when installed: after every check of the recipe

    from chatforge.tools.registry import as_function

    with completion_parsing(tokenizer, tools=bool(tools)):
        trainer = build_trl_trainer(
            GRPOTrainer, model, reward_funcs, training_args, train_dataset, tokenizer, callbacks,
            tools=[as_function(tool) for tool in tools.values()] if tools else None,
        )  # fmt: skip
        train_result = trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    history = trainer.state.log_history
    lengths = [h["completions/mean_length"] for h in history if "completions/mean_length" in h]
    rewards = [h["reward"] for h in history if "reward" in h]
    metrics.update(
        train_loss=train_result.training_loss,
        global_step=trainer.state.global_step,
        train_runtime_s=train_result.metrics.get("train_runtime"),
        first_reward=rewards[0] if rewards else None,
        last_reward=rewards[-1] if rewards else None,
        first_completion_length=lengths[0] if lengths else None,
        last_completion_length=lengths[-1] if lengths else None,
    )
    if eval_problems and runs_generation_checks(trainer.model, trainer.is_world_process_zero()):
        after = score_heldout(trainer.model, tokenizer, eval_problems, script_args, max_new, training_args.seed, tools)
        metrics.update({k: v for k, v in after.items() if not k.endswith("examples")})
        examples = next(v for k, v in after.items() if k.endswith("examples"))
        for ex in examples if trainer.is_world_process_zero() else []:  # every rank ran it; one logs
            logger.info("%s %r -> %r", "ok " if ex["correct"] else "BAD", ex["question"], ex["completion"])
    save_weights(trainer)  # on every rank: sharded (FSDP, ZeRO-3) weights are gathered from all
    if trainer.is_world_process_zero():
        save_grpo_model(trainer, tokenizer, metrics, script_args, model_args)
    trainer.accelerator.wait_for_everyone()
    push_stage_output(training_args)
    return trainer, metrics


@contextmanager
def completion_parsing(tokenizer: PreTrainedTokenizerBase, tools: bool) -> Iterator[None]:
    """While a TRL online trainer is built and trains: parse completions into messages only when tools are offered.

    TRL parses every conversational completion with the tokenizer's response template when it has one (chatforge's
    tokenizers do: chat_templates/chatml_response.json). Without tools the rewards must see the text as the model
    wrote it: parsing moves the reasoning out of the text, and a format reward would then score the template's
    canonical `<think>` layout instead of the model's. With tools TRL needs a template to read the calls;
    tokenizers saved before chatforge wrote one get TRL's Qwen3 template, which reads the same Hermes markup. The
    tokenizer's own template is put back afterwards, so the saved model keeps it.
    """
    own = getattr(tokenizer, "response_template", None)
    if tools:
        from trl.chat_template_utils import qwen3_template

        tokenizer.response_template = own if own is not None else qwen3_template
    else:
        tokenizer.response_template = None
    try:
        yield
    finally:
        tokenizer.response_template = own


def build_trl_trainer(
    trainer_class: type,
    model: PreTrainedModel,
    reward_funcs: list,
    training_args: Any,
    train_dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    callbacks: list[TrainerCallback] | None,
    tools: list | None = None,
) -> Any:
    """A TRL online trainer (GRPOTrainer, RLOOTrainer), with `tools` (plain functions) for its tool loop. With vLLM
    colocated on a CPU, its engine is built in the model's dtype and its weight sync goes through vLLM's in-place
    reload (see the two functions below)."""
    cpu_colocate = training_args.use_vllm and training_args.vllm_mode == "colocate" and not torch.cuda.is_available()
    with colocated_engine_dtype(model.dtype if cpu_colocate else None):
        trainer = trainer_class(
            model=model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            **({"tools": tools} if tools else {}),
        )
    if cpu_colocate:
        patch_cpu_colocate_sync(trainer)
    return trainer


@contextmanager
def colocated_engine_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Build TRL's colocated vLLM engine in `dtype` (None: vLLM's choice).

    On CPU, vLLM's "auto" dtype turns a float32 checkpoint into bfloat16, so rollouts would be sampled from a
    rounded copy of the policy the trainer scores in float32 (measured: sampling logprob gap 0.07-0.12 from the
    first step). TRL does not pass a dtype, so it is added to the engine's constructor while the trainer is built.
    """
    if dtype is None:
        yield
        return
    import trl.generation.vllm_generation as vllm_generation

    original = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(original, dtype=str(dtype).removeprefix("torch."))
    try:
        yield
    finally:
        vllm_generation.LLM = original


def patch_cpu_colocate_sync(trainer: Any) -> None:
    """Make TRL's colocate weight sync work with vLLM's CPU build.

    TRL copies each trained parameter into the engine with `model.load_weights`. vLLM's CPU backend repacks linear
    weights for oneDNN after loading and leaves an empty placeholder without a loader, so that copy fails
    ("'Parameter' object has no attribute 'weight_loader'"). vLLM's in-place `reload_weights` restores the layers,
    loads and repacks them; we route the sync through it. GPU builds keep TRL's own path.
    """
    generation = trainer.vllm_generation
    generation.sync_weights = lambda: reload_vllm_weights(generation.llm, generation._iter_named_params())


def reload_vllm_weights(llm: Any, named_weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load `(name, tensor)` pairs into an in-process vLLM engine (CPU build) in place, tied head included."""
    runner = llm.llm_engine.model_executor.driver_worker.model_runner
    runner.reload_weights(weights_iterator=named_weights)
    refresh_tied_lm_head(runner.get_model())
    llm.reset_prefix_cache()


def refresh_tied_lm_head(vllm_model: torch.nn.Module) -> None:
    """Repack a tied output head after an in-place reload on vLLM's CPU build.

    With tied embeddings the checkpoint has no `lm_head.weight`, so `reload_weights` skips the head ("ParallelLMHead:
    Failed to load weights") and its oneDNN-packed copy of the embedding matrix stays stale: sampling would go on
    from the old output layer while the trainer scores with the new one (measured: the sampling logprob gap grew
    from 0.07 to 0.77 over 300 steps and GRPO collapsed). Repack the head from the new embedding.
    """
    head, inner = getattr(vllm_model, "lm_head", None), getattr(vllm_model, "model", None)
    embed = getattr(inner, "embed_tokens", None)
    # Tied is read from the engine, not the config: when a tied checkpoint also ships a (redundant) lm_head, vLLM
    # builds the head untied, loads it, finds it equal to the embedding and re-ties it, but leaves the config
    # saying untied (measured: the sampling logprob gap then grew to 8.5e-4 in 4 RLHF steps, against 1e-6).
    if head is None or embed is None or getattr(head, "weight", None) is not embed.weight:
        return
    head.quant_method.process_weights_after_loading(head)


def save_grpo_model(
    trainer: Any,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
    script_args: GRPOScriptArguments,
    model_args: ModelConfig,
) -> None:
    """Write the model, tokenizer, chat generation settings, metrics, reward/length curves and card."""
    generation_config = trainer.model.generation_config
    generation_config.eos_token_id = chat_stop_token_ids(tokenizer)
    generation_config.pad_token_id = tokenizer.pad_token_id
    out = save_stage_folder(trainer, tokenizer, metrics, generation_config, "GRPO")
    plot_curves(
        trainer.state.log_history,
        {"reward": "mean reward", "completions/mean_length": "mean completion length (tokens)"},
        out / "grpo_curves.png",
        title="GRPO",
    )
    write_model_card(
        out,
        stage="grpo",
        base_model=None if looks_local(model_args.model_name_or_path) else model_args.model_name_or_path,
        datasets=[str(script_args.dataset_name)],
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        details={
            "starting model": model_args.model_name_or_path,
            "rewards": ", ".join(script_args.rewards),
            "generations per prompt": trainer.args.num_generations,
            "vLLM": f"{trainer.args.vllm_mode}" if trainer.args.use_vllm else "no (HF generate)",
        },
        chat_question="Tom had 3 apples and found 4 more. How many apples does he have?",
    )
