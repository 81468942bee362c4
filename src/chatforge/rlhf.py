"""RLHF: optimise the chat policy against a learned reward model (GRPO, RLOO or PPO), watched by the world's judge.

The reward model (scripts/run_reward.py) imitates the simulated human's preferences; it is only an imitation, so
optimising against it for too long finds replies it over-rates (reward hacking). A `JudgeCallback` therefore scores
the policy's own greedy replies to held-out questions every `judge_every` steps with both the reward model and the
scripted judge (the "human"): the reward model's score keeps rising while the judge's score peaks and then falls.
The curves go to rlhf_curves.png and metrics.json, and the default recipe stops near the judge's peak.

Algorithms (`algorithm` in the recipe): `grpo` and `rloo` use TRL's trainers with the reward model as reward
function and a KL penalty (`beta`) to the starting policy; `ppo` is chatforge's own trainer (chatforge.ppo) with a
value model and an adaptive KL coefficient.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from trl import ModelConfig, RLOOConfig

from chatforge.configs import DeviceDefaults, RecipeError, none_if_null, split_recipe_arg
from chatforge.data import looks_local, require_model
from chatforge.distributed import loads_whole, reshard, runs_generation_checks
from chatforge.generation import chat_stop_token_ids
from chatforge.hub import push_stage_output
from chatforge.model_card import write_model_card
from chatforge.outputs import save_stage_folder, save_weights
from chatforge.plots import plot_curves
from chatforge.pretrain import resolve_checkpoint
from chatforge.reward import _spec, check_model_path, load_pairs, score_replies

logger = logging.getLogger(__name__)

ALGORITHMS = ("grpo", "rloo", "ppo")
JUDGE_KEYS = ("judge_score", "reward_model_score", "correct", "wrong", "declined", "concise", "polite", "mean_words")


@dataclass
class RLHFScriptArguments:
    """The algorithm, the reward model, the prompts to practise on, and the judge that watches for reward hacking."""

    algorithm: str = field(default="grpo", metadata={"help": f"Policy optimiser: {', '.join(ALGORITHMS)}."})
    reward_model_path: str | None = field(
        default="outputs/reward", metadata={"help": "The reward model (scripts/run_reward.py output) to optimise."}
    )
    value_model_path: str | None = field(
        default=None, metadata={"help": "PPO: the value model's starting weights (None: the reward model)."}
    )
    train_dataset: dict | str | None = field(
        default=None,
        metadata={"help": "Prompts: the prompts of preference pairs {format: world|jsonl|hh_rlhf|..., path, split}."},
    )
    max_train_prompts: int | None = field(default=None, metadata={"help": "Use at most this many prompts."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt before each training prompt."})
    judge_eval_file: str | None = field(
        default="data/world/prefs/judge_eval.jsonl",
        metadata={"help": "Held-out questions the judge and the reward model score during training (None: none)."},
    )
    world: str = field(default="data/world", metadata={"help": "World folder (world.json) the judge knows."})
    max_judge_eval: int | None = field(default=100, metadata={"help": "Cap on judge questions (None: all)."})
    judge_every: int = field(default=20, metadata={"help": "Score the policy with the judge every N steps."})
    reward_batch_size: int = field(default=32, metadata={"help": "Replies per reward model forward pass."})

    def __post_init__(self) -> None:
        none_if_null(
            self, "reward_model_path", "value_model_path", "max_train_prompts", "system_prompt", "judge_eval_file",
            "max_judge_eval",
        )  # fmt: skip
        if self.algorithm not in ALGORITHMS:
            raise RecipeError(f"algorithm: unknown {self.algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        if self.judge_every < 1:
            raise RecipeError(f"judge_every must be >= 1, got {self.judge_every}")
        self.train_dataset = _spec(self.train_dataset, "train_dataset")


@dataclass
class ChatRLOOConfig(DeviceDefaults, RLOOConfig):
    """TRL's `RLOOConfig` with chatforge's defaults: bf16 only where supported, no gradient checkpointing."""

    output_dir: str = field(default="outputs/rlhf", metadata={"help": "Where the policy and checkpoints go."})


def config_class(algorithm: str) -> type:
    """The training-arguments class of an algorithm (its recipe keys are that class's fields)."""
    if algorithm == "grpo":
        from chatforge.grpo import ChatGRPOConfig

        return ChatGRPOConfig
    if algorithm == "rloo":
        return ChatRLOOConfig
    if algorithm == "ppo":
        from chatforge.ppo import PPOConfig

        return PPOConfig
    raise RecipeError(f"algorithm: unknown {algorithm!r}; use one of {', '.join(ALGORITHMS)}")


def check_reward_model_path(path: str | None) -> str:
    """The reward model must be set and, when local, exist; say what makes it."""
    return require_model(
        path,
        "reward model",
        "a reward model (e.g. outputs/reward)",
        "train it first with `python scripts/run_reward.py recipes/reward.yaml` (or run `make demo`)",
    )


class RewardModelScorer:
    """A reward function backed by a sequence classifier: the score of each (prompt, completion) conversation.

    Called the way TRL calls reward functions, `scorer(prompts=..., completions=...)` with conversational
    prompts and completions (or plain completion strings), so GRPO, RLOO and chatforge's PPO share it.
    """

    def __init__(self, path: str, device: torch.device | str | None = None, batch_size: int = 32) -> None:
        path = check_reward_model_path(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        self.model.requires_grad_(False).eval()
        if device is not None:
            self.model.to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.chat_template:
            raise RecipeError(f"{path} has no chat template: the reward model scores chat-formatted replies")
        self.batch_size = batch_size
        self.__name__ = "reward_model"  # TRL names the logged reward after it

    def __call__(self, prompts: list, completions: list, **_: Any) -> list[float]:
        replies = [c if isinstance(c, list) else [{"role": "assistant", "content": c}] for c in completions]
        return score_replies(self.model, self.tokenizer, prompts, replies, batch_size=self.batch_size)


def load_prompts(script_args: RLHFScriptArguments) -> Dataset:
    """The distinct prompts of the recipe's preference pairs, as a `prompt` column of conversations."""
    if script_args.train_dataset is None:
        raise RecipeError("set train_dataset in the RLHF recipe (e.g. {format: jsonl, path: data/world/prefs})")
    pairs = load_pairs(script_args.train_dataset, None, "train_dataset")
    seen: set[str] = set()
    prompts: list[list[dict]] = []
    for prompt in pairs["prompt"]:
        key = repr(prompt)
        if key in seen:
            continue
        seen.add(key)
        if script_args.system_prompt and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": script_args.system_prompt}, *prompt]
        prompts.append(prompt)
    if script_args.max_train_prompts is not None:
        prompts = prompts[: script_args.max_train_prompts]
    return Dataset.from_dict({"prompt": prompts})


class JudgeCallback(TrainerCallback):
    """Every `every` steps (and at the start and end), score the policy's greedy replies to held-out questions with
    the world's judge and with the reward model, and append them to the trainer's log history as `judge/<key>`."""

    def __init__(
        self, judge: Any, rows: list[dict], tokenizer: PreTrainedTokenizerBase, scorer: RewardModelScorer, every: int
    ) -> None:
        self.judge, self.rows, self.tokenizer, self.scorer, self.every = judge, rows, tokenizer, scorer, every
        self.last_step = -1

    def evaluate(self, policy: Any, step: int) -> dict[str, float]:
        from chatforge.evaluation.judge import judge_policy

        was_training = policy.training
        result = judge_policy(policy, self.tokenizer, self.rows, self.judge, scorer=self.scorer)
        reshard(policy)  # FSDP2: back into shards before the next rollout's weight sync reads them
        policy.train(was_training)
        self.last_step = step
        return {f"judge/{k}": v for k, v in result.items() if k in JUDGE_KEYS or k.endswith("_correct")}

    def _log(self, state: Any, model: Any) -> None:
        policy = getattr(model, "policy", model)  # chatforge's PPO passes its policy-and-value wrapper
        if state.global_step == self.last_step or not runs_generation_checks(policy, state.is_world_process_zero):
            return
        scores = self.evaluate(policy, state.global_step)
        if not state.is_world_process_zero:  # a rank holding a shard joins the generation, the main one logs
            return
        state.log_history.append({**scores, "step": state.global_step})
        logger.info(
            "step %d: judge %.3f, reward model %.3f", state.global_step, scores["judge/judge_score"],
            scores["judge/reward_model_score"],
        )  # fmt: skip

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        if state.global_step == 0:
            self._log(state, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        if state.global_step % self.every == 0:
            self._log(state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        self._log(state, model)


def judge_curve(log_history: list[dict]) -> list[dict]:
    """The judge's evaluations in a log history: one dict per evaluated step (`step` and the `judge/` keys)."""
    return [
        {"step": h["step"], **{k.removeprefix("judge/"): v for k, v in h.items() if k.startswith("judge/")}}
        for h in log_history
        if "judge/judge_score" in h
    ]


def summarise_curve(curve: list[dict]) -> dict[str, Any]:
    """Start, end and the judge's best step; `reward_hacking` when the reward model's score still rose after the
    judge's peak while the judge's score fell by more than 0.05 (on the 0-3 scale)."""
    if not curve:
        return {}
    first, last = curve[0], curve[-1]
    best = max(curve, key=lambda c: c["judge_score"])
    return {
        "before_judge_score": first["judge_score"],
        "before_reward_model_score": first["reward_model_score"],
        "judge_score": last["judge_score"],
        "reward_model_score": last["reward_model_score"],
        "best_judge_score": best["judge_score"],
        "best_judge_step": best["step"],
        "reward_hacking": bool(
            last["reward_model_score"] > best["reward_model_score"]
            and last["judge_score"] < best["judge_score"] - 0.05
        ),
    }


def build_trainer(
    script_args: RLHFScriptArguments,
    training_args: Any,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    scorer: RewardModelScorer,
    prompts: Dataset,
    callbacks: list[TrainerCallback],
) -> Any:
    """The algorithm's trainer: TRL's GRPO/RLOO with the reward model as reward function, or chatforge's PPO."""
    if script_args.algorithm == "ppo":
        from chatforge.ppo import PPOTrainer

        ref_model = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=model.dtype)
        value_path = script_args.value_model_path or script_args.reward_model_path
        from transformers import AutoModelForTokenClassification

        value_model = AutoModelForTokenClassification.from_pretrained(value_path, num_labels=1, dtype=model.dtype)
        return PPOTrainer(
            args=training_args,
            processing_class=tokenizer,
            model=model,
            ref_model=ref_model,
            value_model=value_model,
            reward_fn=scorer,
            train_dataset=prompts,
            callbacks=callbacks,
        )
    from chatforge.grpo import build_trl_trainer, check_vllm

    check_vllm(training_args)
    if script_args.algorithm == "grpo":
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOTrainer as Trainer
    return build_trl_trainer(Trainer, model, [scorer], training_args, prompts, tokenizer, callbacks)


def train(
    script_args: RLHFScriptArguments,
    training_args: Any,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[Any, dict]:
    """Optimise the policy against the reward model; record the reward model's and the judge's scores over steps."""
    model_path = check_model_path(model_args.model_name_or_path)
    if script_args.reward_model_path is None:
        raise RecipeError("reward_model_path is not set; RLHF optimises a reward model (recipes/reward.yaml)")
    check_reward_model_path(script_args.reward_model_path)
    if not training_args.max_steps or training_args.max_steps < 1:
        raise RecipeError("set max_steps in the RLHF recipe: how long to optimise is the choice that matters here")
    prompts = load_prompts(script_args)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise RecipeError(f"{model_path} has no chat template; RLHF prompts are conversations (train SFT first)")
    # this process's device (cuda:<local rank> under a multi-GPU launch), and the scorer whole on every rank:
    # it is called directly as a reward function, never wrapped by a DeepSpeed engine
    with loads_whole(training_args):
        scorer = RewardModelScorer(script_args.reward_model_path, training_args.device, script_args.reward_batch_size)
    if scorer.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise RecipeError(f"{script_args.reward_model_path} and {model_path} use different tokenizers")
    callbacks = list(callbacks or [])
    if script_args.judge_eval_file:
        from chatforge.evaluation.judge import load_judge

        judge, rows = load_judge(script_args.judge_eval_file, script_args.world, script_args.max_judge_eval)
        callbacks.append(JudgeCallback(judge, rows, tokenizer, scorer, script_args.judge_every))
    transformers.set_seed(training_args.seed)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=model_args.dtype or "auto", attn_implementation=model_args.attn_implementation
    )
    from chatforge.grpo import completion_parsing

    with completion_parsing(tokenizer, tools=False):  # the reward model scores the replies as written
        trainer = build_trainer(script_args, training_args, model, tokenizer, scorer, prompts, callbacks)
        result = trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    curve = judge_curve(trainer.state.log_history)
    metrics: dict[str, Any] = {
        "algorithm": script_args.algorithm,
        "train_prompts": len(prompts),
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
        **summarise_curve(curve),
    }
    if curve:
        metrics["judge_curve"] = curve
        metrics.update({f"final_{k}": v for k, v in curve[-1].items() if k.endswith("_correct")})
    save_weights(trainer)  # on every rank: sharded (FSDP, ZeRO-3) weights are gathered from all
    if trainer.is_world_process_zero():
        save_rlhf_model(trainer, tokenizer, metrics, script_args, model_args)
    trainer.accelerator.wait_for_everyone()
    push_stage_output(training_args)
    return trainer, metrics


def save_rlhf_model(
    trainer: Any,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
    script_args: RLHFScriptArguments,
    model_args: ModelConfig,
) -> None:
    """Write the policy (loads with AutoModelForCausalLM), chat generation settings, metrics, curves and card."""
    policy = getattr(trainer, "policy", trainer.model)
    generation_config = policy.generation_config
    generation_config.eos_token_id = chat_stop_token_ids(tokenizer)
    generation_config.pad_token_id = tokenizer.pad_token_id
    out = save_stage_folder(trainer, tokenizer, metrics, generation_config, "RLHF")
    plot_rlhf_curves(trainer.state.log_history, out / "rlhf_curves.png")
    write_model_card(
        out,
        stage="rlhf",
        base_model=None if looks_local(model_args.model_name_or_path) else model_args.model_name_or_path,
        datasets=[str(script_args.train_dataset.get("path") or script_args.train_dataset.get("name", ""))],
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        details={
            "starting model": model_args.model_name_or_path,
            "algorithm": script_args.algorithm,
            "reward model": script_args.reward_model_path,
        },
        chat_question="Where was Talia born?",
    )


def plot_rlhf_curves(log_history: list[dict], path: Any) -> None:
    """The reward model's and the judge's scores of held-out replies over steps (the reward hacking picture)."""
    curve = judge_curve(log_history)
    if len(curve) < 2 or any(math.isnan(c["judge_score"]) for c in curve):
        plot_curves(log_history, {"judge/reward_model_score": "reward model score"}, path, title="RLHF")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    fig, left = plt.subplots(figsize=(6.5, 3.8))
    left.plot(steps, [c["reward_model_score"] for c in curve], color="tab:blue", marker=".", label="reward model")
    left.set_xlabel("step")
    left.set_ylabel("reward model score", color="tab:blue")
    right = left.twinx()
    right.plot(steps, [c["judge_score"] for c in curve], color="tab:red", marker=".", label="judge (0-3)")
    right.set_ylabel("judge score (0-3)", color="tab:red")
    best = max(curve, key=lambda c: c["judge_score"])
    right.axvline(best["step"], color="grey", linestyle=":", linewidth=1)
    left.set_title("RLHF: held-out replies scored by the reward model and by the judge", fontsize=10)
    left.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_mapping(recipe: str | None) -> dict:
    import yaml

    if recipe is None:
        return {}
    try:
        config = yaml.safe_load(open(recipe)) or {}
    except (OSError, yaml.YAMLError):
        return {}  # parse_recipe reports the file problem with its own message
    return config if isinstance(config, dict) else {}


def recipe_algorithm(args: list[str]) -> str:
    """The `algorithm` a command line asks for (`--algorithm X` wins over the recipe's key), before full parsing:
    it decides which training-arguments class reads the rest of the recipe."""
    for i, arg in enumerate(args):
        if arg.startswith("--algorithm="):
            return arg.split("=", 1)[1]
        if arg == "--algorithm" and i + 1 < len(args):
            return args[i + 1]
    return str(_read_mapping(split_recipe_arg(args)[0]).get("algorithm") or "grpo")


def resolve_rlhf_recipe(args: list[str]) -> tuple[str, list[str]]:
    """The algorithm, and the command line with the recipe flattened for it.

    A recipe may hold one section per algorithm (`grpo:`, `rloo:`, `ppo:`) beside the shared keys, so switching
    `algorithm` switches the whole set of settings; the chosen section's keys override the shared ones and the other
    sections are dropped. The flattened recipe goes to a temporary file, and
    every key is checked against the algorithm's classes, with errors naming the original file and section.
    """
    import yaml

    from chatforge.configs import load_recipe_file

    algorithm = recipe_algorithm(args)
    recipe, rest = split_recipe_arg(args)
    config = _read_mapping(recipe)
    if recipe is None or not any(isinstance(config.get(name), dict) for name in ALGORITHMS):
        return algorithm, args
    section = config.get(algorithm) or {}
    if not isinstance(section, dict):
        raise RecipeError(f"{recipe}: the `{algorithm}` section must be a mapping of settings")
    flat = {k: v for k, v in config.items() if k not in ALGORITHMS} | section | {"algorithm": algorithm}
    flat_path = Path(tempfile.mkdtemp(prefix="chatforge-rlhf-")) / f"{Path(recipe).stem}.{algorithm}.yaml"
    flat_path.write_text(
        f"# {recipe} flattened for algorithm {algorithm} (written by run_rlhf.py)\n" + yaml.safe_dump(flat)
    )
    try:
        load_recipe_file(flat_path, [RLHFScriptArguments, config_class(algorithm), ModelConfig])
    except RecipeError as err:
        raise RecipeError(str(err).replace(str(flat_path), f"{recipe} (algorithm {algorithm})")) from None
    return algorithm, [str(flat_path), *rest]
