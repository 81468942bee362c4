"""Direct preference optimisation with TRL's `DPOTrainer`: the offline alternative to RLHF with a reward model."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from trl import DPOConfig, DPOTrainer, ModelConfig, get_peft_config

from chatforge.configs import DeviceDefaults, RecipeError, none_if_null
from chatforge.data import looks_local
from chatforge.distributed import gathered_weights, runs_generation_checks
from chatforge.generation import chat_stop_token_ids
from chatforge.hub import push_stage_output
from chatforge.model_card import write_model_card
from chatforge.outputs import save_stage_folder, save_weights
from chatforge.pretrain import resolve_checkpoint
from chatforge.reward import _spec, check_model_path, load_train_test_pairs

logger = logging.getLogger(__name__)


@dataclass
class DPOScriptArguments:
    """Which preference pairs to learn from, and how the simulated human judges the result."""

    train_dataset: dict | str | None = field(
        default=None,
        metadata={"help": "Preference pairs: {format: world|jsonl|hh_rlhf|oasst|ultrafeedback, path|name, split}."},
    )
    test_dataset: dict | str | None = field(
        default=None, metadata={"help": "Held-out pairs: DPO's implicit-reward accuracy (None: no test)."}
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "Cap on training pairs (None: all)."})
    max_test_pairs: int | None = field(default=None, metadata={"help": "Cap on test pairs (None: all)."})
    judge_eval_file: str | None = field(
        default="data/world/prefs/judge_eval.jsonl",
        metadata={"help": "Questions whose greedy replies the world's judge scores before and after (None: skip)."},
    )
    world: str = field(default="data/world", metadata={"help": "World folder (world.json) the judge knows."})
    max_judge_eval: int | None = field(default=None, metadata={"help": "Cap on judge questions (None: all)."})

    def __post_init__(self) -> None:
        none_if_null(self, "max_train_pairs", "max_test_pairs", "judge_eval_file", "max_judge_eval")
        self.train_dataset = _spec(self.train_dataset, "train_dataset")
        self.test_dataset = _spec(self.test_dataset, "test_dataset")


@dataclass
class ChatDPOConfig(DeviceDefaults, DPOConfig):
    """TRL's `DPOConfig` with chatforge's defaults: bf16 only where the GPU supports it."""

    output_dir: str = field(default="outputs/dpo", metadata={"help": "Where the model and checkpoints go."})


def train(
    script_args: DPOScriptArguments,
    training_args: ChatDPOConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[DPOTrainer, dict]:
    """DPO from the chat model on preference pairs; judge the policy's replies before and after."""
    from chatforge.evaluation.judge import judge_policy, load_judge

    model_path = check_model_path(model_args.model_name_or_path)
    train_pairs, test_pairs = load_train_test_pairs(script_args, "DPO")
    judged = None
    if script_args.judge_eval_file:
        judged = load_judge(script_args.judge_eval_file, script_args.world, script_args.max_judge_eval)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise RecipeError(f"{model_path} has no chat template: DPO compares chat-formatted replies")
    transformers.set_seed(training_args.seed)
    dtype = model_args.dtype or "auto"
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    peft_config = get_peft_config(model_args)
    # TRL builds no reference model from a model object: give it the frozen starting policy (none with LoRA,
    # where the adapter-free base is the reference)
    ref_model = None if peft_config else AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    metrics: dict[str, Any] = {"train_pairs": len(train_pairs)}
    if judged:
        with gathered_weights(model):  # ZeRO-3 loads the model partitioned; it has no engine yet
            before = judge_policy(model, tokenizer, judged[1], judged[0])
        metrics.update({f"before_{k}": v for k, v in before.items() if isinstance(v, float)})
        logger.info("judge before DPO: %s", {k: round(v, 3) for k, v in before.items() if isinstance(v, float)})
    keep = ["prompt", "chosen", "rejected"]
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_pairs.select_columns(keep),
        eval_dataset=test_pairs.select_columns(keep) if test_pairs is not None else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    # (no "before" preference accuracy: at step 0 the policy is the reference, every implicit reward is 0)
    result = trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    metrics.update(
        train_loss=result.training_loss,
        global_step=trainer.state.global_step,
        train_runtime_s=result.metrics.get("train_runtime"),
    )
    if test_pairs is not None:
        end = trainer.evaluate()
        metrics["preference_accuracy"] = end.get("eval_rewards/accuracies")
        metrics["reward_margin"] = end.get("eval_rewards/margins")
    if judged and runs_generation_checks(trainer.model, trainer.is_world_process_zero()):
        after = judge_policy(trainer.model, tokenizer, judged[1], judged[0])
        metrics.update({k: v for k, v in after.items() if isinstance(v, float)})
        for example in after["examples"] if trainer.is_world_process_zero() else []:
            logger.info("judge %.1f | %r -> %r", example["score"], example["question"], example["reply"])
    save_weights(trainer)  # on every rank: sharded (FSDP, ZeRO-3) weights are gathered from all
    if trainer.is_world_process_zero():
        save_dpo_model(trainer, tokenizer, metrics, script_args, model_args)
    trainer.accelerator.wait_for_everyone()
    push_stage_output(training_args)
    return trainer, metrics


def save_dpo_model(
    trainer: DPOTrainer,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
    script_args: DPOScriptArguments,
    model_args: ModelConfig,
) -> None:
    """Write the policy (loads with AutoModelForCausalLM), chat generation settings, metrics, plot and card."""
    generation_config = trainer.model.generation_config
    generation_config.eos_token_id = chat_stop_token_ids(tokenizer)
    generation_config.pad_token_id = tokenizer.pad_token_id
    out = save_stage_folder(trainer, tokenizer, metrics, generation_config, "DPO")
    source = script_args.train_dataset.get("path") or script_args.train_dataset.get("name", "")
    write_model_card(
        out,
        stage="dpo",
        base_model=None if looks_local(model_args.model_name_or_path) else model_args.model_name_or_path,
        datasets=[str(source)],
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        details={
            "base model": model_args.model_name_or_path,
            "beta": trainer.args.beta,
            "loss": trainer.args.loss_type,
        },
        chat_question="Who are you?",
    )
