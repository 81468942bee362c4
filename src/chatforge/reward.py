"""Reward modelling with TRL's `RewardTrainer`: a scalar head on the chat model, trained on preference pairs."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from trl import ModelConfig, RewardConfig, RewardTrainer

from chatforge.configs import DeviceDefaults, RecipeError, none_if_null
from chatforge.data import looks_local, require_model
from chatforge.distributed import gathered_weights
from chatforge.hub import push_stage_output
from chatforge.model_card import write_model_card
from chatforge.outputs import save_stage_folder, save_weights
from chatforge.pretrain import resolve_checkpoint

logger = logging.getLogger(__name__)


def _spec(value: dict | str | None, name: str) -> dict | None:
    """A dataset spec given in YAML (a mapping) or on the command line (JSON)."""
    if value in (None, "", "null", "None"):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RecipeError(f"{name} is not valid JSON: {err}") from None
    if not isinstance(value, dict) or "format" not in value:
        raise RecipeError(f"{name} must be a mapping with a `format` (world, jsonl, hh_rlhf, oasst, ultrafeedback)")
    return value


@dataclass
class RewardScriptArguments:
    """Which preference pairs to train and test the reward model on."""

    train_dataset: dict | str | None = field(
        default=None,
        metadata={"help": "Preference pairs: {format: world|jsonl|hh_rlhf|oasst|ultrafeedback, path|name, split}."},
    )
    test_dataset: dict | str | None = field(
        default=None, metadata={"help": "Held-out pairs for pairwise accuracy (same form; None: no test)."}
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "Cap on training pairs (None: all)."})
    max_test_pairs: int | None = field(default=None, metadata={"help": "Cap on test pairs (None: all)."})

    def __post_init__(self) -> None:
        none_if_null(self, "max_train_pairs", "max_test_pairs")
        self.train_dataset = _spec(self.train_dataset, "train_dataset")
        self.test_dataset = _spec(self.test_dataset, "test_dataset")


@dataclass
class ChatRewardConfig(DeviceDefaults, RewardConfig):
    """TRL's `RewardConfig` with chatforge's defaults: bf16 only where the GPU supports it."""

    output_dir: str = field(default="outputs/reward", metadata={"help": "Where the reward model goes."})


def load_pairs(spec: dict, cap: int | None, name: str) -> Dataset:
    """A preference dataset from its spec, validated, capped at `cap` rows."""
    from chatforge.preferences import load_preference_dataset

    dataset = load_preference_dataset(spec)
    if len(dataset) == 0:
        raise RecipeError(f"{name}: no preference pairs in {spec}")
    return dataset.select(range(min(cap, len(dataset)))) if cap else dataset


@torch.no_grad()
def score_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    replies: list[list[dict]],
    batch_size: int = 32,
    max_length: int | None = None,
) -> list[float]:
    """The reward model's score of each (prompt, reply) conversation, as the chat template renders it."""
    model.eval()
    texts = [tokenizer.apply_chat_template(prompt + reply, tokenize=False) for prompt, reply in zip(prompts, replies)]
    scores: list[float] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # the classifier reads the last non-pad token
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                add_special_tokens=False,
            ).to(model.device)
            scores.extend(model(**batch).logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = side
    return scores


def pairwise_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Dataset, max_length: int | None = None
) -> dict[str, Any]:
    """Share of pairs whose chosen reply scores above the rejected one, overall and per `rejected_kind`."""
    chosen = score_replies(model, tokenizer, pairs["prompt"], pairs["chosen"], max_length=max_length)
    rejected = score_replies(model, tokenizer, pairs["prompt"], pairs["rejected"], max_length=max_length)
    wins = [c > r for c, r in zip(chosen, rejected)]
    result: dict[str, Any] = {
        "accuracy": sum(wins) / len(wins),
        "mean_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(wins),
        "num_pairs": len(wins),
    }
    if "rejected_kind" in pairs.column_names:
        by_kind: dict[str, list[bool]] = defaultdict(list)
        for kind, win in zip(pairs["rejected_kind"], wins):
            by_kind[kind].append(win)
        result["per_kind"] = {kind: sum(v) / len(v) for kind, v in sorted(by_kind.items())}
    return result


def load_train_test_pairs(script_args: Any, stage: str) -> tuple[Dataset, Dataset | None]:
    """The recipe's training pairs and (if set) held-out pairs: the reward and DPO stages read them alike."""
    if script_args.train_dataset is None:
        raise RecipeError(f"set train_dataset in the {stage} recipe (e.g. {{format: jsonl, path: data/world/prefs}})")
    train_pairs = load_pairs(script_args.train_dataset, script_args.max_train_pairs, "train_dataset")
    test_pairs = None
    if script_args.test_dataset:
        test_pairs = load_pairs(script_args.test_dataset, script_args.max_test_pairs, "test_dataset")
    return train_pairs, test_pairs


def check_model_path(name_or_path: str | None) -> str:
    return require_model(
        name_or_path,
        "chat model",
        "an SFT model (e.g. outputs/sft)",
        "train it first with `python scripts/run_sft.py recipes/sft.yaml` (or run `make demo`)",
    )


def train(
    script_args: RewardScriptArguments,
    training_args: ChatRewardConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[RewardTrainer, dict]:
    """Train a reward model on preference pairs; report pairwise accuracy on held-out pairs before and after."""
    model_path = check_model_path(model_args.model_name_or_path)
    train_pairs, test_pairs = load_train_test_pairs(script_args, "reward")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise RecipeError(f"{model_path} has no chat template: a reward model scores chat-formatted replies")
    if tokenizer.pad_token is None:
        raise RecipeError(f"{model_path}'s tokenizer has no pad token; the reward head reads the last non-pad token")
    transformers.set_seed(training_args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, dtype=model_args.dtype or "auto"
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    metrics: dict[str, Any] = {"train_pairs": len(train_pairs)}
    if test_pairs is not None:
        with gathered_weights(model):  # ZeRO-3 loads the model partitioned; it has no engine yet
            before = pairwise_accuracy(model, tokenizer, test_pairs, training_args.max_length)
        metrics["before_pairwise_accuracy"] = before["accuracy"]
        logger.info("pairwise accuracy before training (random head): %.3f", before["accuracy"])
    keep = ["prompt", "chosen", "rejected"]
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_pairs.select_columns(keep),
        eval_dataset=test_pairs.select_columns(keep) if test_pairs is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    result = trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    metrics.update(
        train_loss=result.training_loss,
        global_step=trainer.state.global_step,
        train_runtime_s=result.metrics.get("train_runtime"),
    )
    if test_pairs is not None:
        after = pairwise_accuracy(trainer.model, tokenizer, test_pairs, training_args.max_length)
        metrics.update(
            pairwise_accuracy=after["accuracy"], mean_margin=after["mean_margin"], test_pairs=after["num_pairs"]
        )
        if "per_kind" in after:
            metrics["pairwise_accuracy_per_kind"] = after["per_kind"]
        logger.info("pairwise accuracy after training: %.3f %s", after["accuracy"], after.get("per_kind", ""))
    save_weights(trainer)  # on every rank: sharded (FSDP, ZeRO-3) weights are gathered from all
    if trainer.is_world_process_zero():
        save_reward_model(trainer, tokenizer, metrics, script_args, model_args)
    trainer.accelerator.wait_for_everyone()
    push_stage_output(training_args)
    return trainer, metrics


def save_reward_model(
    trainer: RewardTrainer,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
    script_args: RewardScriptArguments,
    model_args: ModelConfig,
) -> None:
    """Write the reward model (loads with AutoModelForSequenceClassification), metrics, loss plot and card."""
    out = save_stage_folder(trainer, tokenizer, metrics, None, "reward model")
    sources = [script_args.train_dataset.get("path") or script_args.train_dataset.get("name", "")]
    write_model_card(
        out,
        stage="reward",
        base_model=None if looks_local(model_args.model_name_or_path) else model_args.model_name_or_path,
        datasets=[str(s) for s in sources],
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        details={"base model": model_args.model_name_or_path, "head": "sequence classification, 1 label"},
        prompt="<|im_start|>user\\nWhere was Talia born?<|im_end|>\\n<|im_start|>assistant\\nIn Boport.<|im_end|>",
        reward_model=True,
    )
