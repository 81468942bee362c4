"""Supervised fine-tuning with TRL's `SFTTrainer`: configs, checks, and the stage's `train`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import transformers
from datasets import DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, get_peft_config

from chatforge.chat_data import check_generation_tags, validate_conversations
from chatforge.configs import DeviceDefaults, RecipeError, none_if_null
from chatforge.data import load_corpus, looks_local, require_model
from chatforge.distributed import gathered_weights, runs_generation_checks
from chatforge.evaluation.chat_qa import chat_accuracy, load_chat_eval
from chatforge.generation import chat_stop_token_ids
from chatforge.hub import push_stage_output
from chatforge.mixtures import load_mixture
from chatforge.model_card import write_model_card
from chatforge.outputs import save_stage_folder, save_weights
from chatforge.pretrain import resolve_checkpoint
from chatforge.replay import mix_in_replay, tokenize_conversations
from chatforge.tokenizer import make_portable

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(ScriptArguments):
    """Which conversations to train on and how to measure the result."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A `messages` dataset (local folder or Hub id); or use dataset_mixture."}
    )
    dataset_test_split: str | None = field(default="test", metadata={"help": "Split for eval loss (None: none)."})
    dataset_mixture: dict | str | None = field(
        default=None,
        metadata={
            "help": "Weighted mixture: {datasets: [{id, config, split, columns, weight}], seed, test_split_size}"
        },
    )
    chat_eval_file: str | None = field(
        default="data/world/chat_eval.jsonl",
        metadata={
            "help": "Questions with known answers, asked in chat format before and after training (None: skip)."
        },
    )
    max_chat_eval: int | None = field(default=None, metadata={"help": "Cap on chat eval questions (None: all)."})
    eval_before_training: bool = field(
        default=True, metadata={"help": "Also score the starting model on the chat eval, for a before/after view."}
    )
    merge_adapter: bool = field(
        default=True, metadata={"help": "With use_peft: also write the merged full model to output_dir/merged."}
    )
    replay_dataset: str | None = field(
        default=None,
        metadata={"help": "A text corpus (e.g. data/world/corpus) mixed into the SFT data with loss on every token."},
    )
    replay_fraction: float = field(
        default=0.0, metadata={"help": "Share of the training rows that are replay blocks, in [0, 1)."}
    )
    replay_block_size: int = field(default=128, metadata={"help": "Tokens per replay block (pretraining's size)."})
    replay_text_column: str = field(default="text", metadata={"help": "Text column of replay_dataset."})

    def __post_init__(self) -> None:
        none_if_null(
            self, "chat_eval_file", "dataset_test_split", "dataset_config", "dataset_name", "dataset_mixture",
            "replay_dataset",
        )  # fmt: skip
        if not 0.0 <= self.replay_fraction < 1.0:
            raise RecipeError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if (self.replay_dataset is None) != (self.replay_fraction == 0.0):
            raise RecipeError("set both replay_dataset and replay_fraction > 0 for replay, or neither")
        if self.replay_block_size < 8:
            raise RecipeError(f"replay_block_size must be >= 8, got {self.replay_block_size}")
        if isinstance(self.dataset_mixture, str):  # given on the command line as JSON
            try:
                self.dataset_mixture = json.loads(self.dataset_mixture)
            except json.JSONDecodeError as err:
                raise RecipeError(f"dataset_mixture is not valid JSON: {err}") from None


@dataclass
class ChatSFTConfig(DeviceDefaults, SFTConfig):
    """TRL's `SFTConfig` with chatforge's defaults: bf16 only where the GPU supports it, ChatML end of turn."""

    output_dir: str = field(default="outputs/sft", metadata={"help": "Where the model and checkpoints go."})
    assistant_only_loss: bool = field(default=True, metadata={"help": "Train only on the assistant's tokens."})
    eos_token: str | None = field(default="<|im_end|>", metadata={"help": "Token that ends an assistant turn."})


def check_model_path(name_or_path: str | None) -> str:
    """The base model must exist before anything else happens; say what makes it."""
    return require_model(
        name_or_path,
        "base model",
        "a pretrained model (e.g. outputs/pretrain)",
        "pretrain it first with `python scripts/run_pretrain.py recipes/pretrain.yaml` (or run `make demo`)",
    )


def load_sft_datasets(script_args: SFTScriptArguments) -> DatasetDict:
    """The train (and optional test) conversations from a mixture or a single dataset, validated."""
    if script_args.dataset_mixture:
        datasets = load_mixture(script_args.dataset_mixture)
        name = "dataset_mixture"
    elif script_args.dataset_name:
        splits = [script_args.dataset_train_split]
        if script_args.dataset_test_split:
            splits.append(script_args.dataset_test_split)
        datasets = load_corpus(
            script_args.dataset_name, splits, "messages", script_args.dataset_config, optional_splits=tuple(splits[1:])
        )
        name = script_args.dataset_name
        if script_args.dataset_test_split in datasets:
            datasets["test"] = datasets.pop(script_args.dataset_test_split)
        datasets["train"] = datasets.pop(script_args.dataset_train_split)
    else:
        raise RecipeError("set dataset_name or dataset_mixture in the SFT recipe")
    for split, dataset in datasets.items():
        validate_conversations(dataset, f"{name} [{split}]")
    return datasets


def train(
    script_args: SFTScriptArguments,
    training_args: ChatSFTConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[SFTTrainer, dict]:
    """Fine-tune the base model on conversations; save it with metrics, plots and a model card."""
    model_path = check_model_path(model_args.model_name_or_path)
    chat_eval = load_chat_eval(script_args.chat_eval_file) if script_args.chat_eval_file else None
    if chat_eval and script_args.max_chat_eval:
        chat_eval = chat_eval[: script_args.max_chat_eval]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if training_args.chat_template_path:
        template_path = Path(training_args.chat_template_path)
        if not template_path.is_file():
            raise RecipeError(f"chat_template_path not found: {template_path}")
        tokenizer.chat_template = template_path.read_text()
        training_args.chat_template_path = None  # applied here; TRL would otherwise try to clone it
    if not tokenizer.chat_template:
        raise RecipeError(f"{model_path} has no chat template; set chat_template_path: chat_templates/chatml.jinja")
    if training_args.assistant_only_loss:
        check_generation_tags(tokenizer.chat_template)
    datasets = load_sft_datasets(script_args)
    num_conversations = len(datasets["train"])
    replayed = 0
    assistant_only = training_args.assistant_only_loss  # for the card: replay turns TRL's flag off below
    if script_args.replay_dataset:
        masks = training_args.assistant_only_loss
        datasets["train"], replayed = mix_in_replay(
            datasets["train"], tokenizer, script_args.replay_dataset, script_args.replay_fraction,
            script_args.replay_block_size, training_args.seed, script_args.replay_text_column, masks=masks,
        )  # fmt: skip
        if datasets.get("test") is not None:
            datasets["test"] = tokenize_conversations(datasets["test"], tokenizer, masks=masks)
        # The data now carry their own loss masks, which TRL applies; it refuses assistant_only_loss on
        # tokenized rows (it needs conversations to build the mask itself).
        training_args.assistant_only_loss = False
    transformers.set_seed(training_args.seed)

    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=model_args.dtype or "auto", attn_implementation=model_args.attn_implementation
    )
    metrics: dict = {}
    if chat_eval and script_args.eval_before_training:
        with gathered_weights(model):  # ZeRO-3 loads the model partitioned; it has no engine yet
            before = chat_accuracy(model, tokenizer, chat_eval)
        metrics.update({f"before_chat_{k}": v for k, v in before.items() if k.endswith("accuracy")})
        logger.info("chat eval before SFT: %s", {k: v for k, v in metrics.items()})

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("test"),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    metrics.update(
        train_loss=train_result.training_loss,
        global_step=trainer.state.global_step,
        train_runtime_s=train_result.metrics.get("train_runtime"),
        train_conversations=num_conversations,
        replay_blocks=replayed,
    )
    if datasets.get("test") is not None:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    if chat_eval and runs_generation_checks(trainer.model, trainer.is_world_process_zero()):
        after = chat_accuracy(trainer.model, tokenizer, chat_eval)
        metrics.update({f"chat_{k}": v for k, v in after.items() if k.endswith("accuracy")})
        metrics["chat_per_relation"] = after["per_relation"]
        for kind, examples in after["examples"].items() if trainer.is_world_process_zero() else []:
            for ex in examples:
                logger.info("%s %s | %r -> %r", kind, "ok " if ex["ok"] else "BAD", ex["question"], ex["reply"])

    save_weights(trainer)  # on every rank: sharded (FSDP, ZeRO-3) weights are gathered from all
    if trainer.is_world_process_zero():
        save_sft_model(trainer, tokenizer, metrics, script_args, model_args, assistant_only)
        if model_args.use_peft and script_args.merge_adapter:
            merge_adapter(training_args.output_dir, Path(training_args.output_dir) / "merged")
    trainer.accelerator.wait_for_everyone()
    push_stage_output(training_args)
    return trainer, metrics


def save_sft_model(
    trainer: SFTTrainer,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
    script_args: SFTScriptArguments,
    model_args: ModelConfig,
    assistant_only_loss: bool,
) -> None:
    """Write the model (or adapter), tokenizer, chat generation settings, metrics, loss plot and card.

    `assistant_only_loss` is what the recipe asked for: with replay, chatforge builds the loss masks itself and
    TRL's own flag is off."""
    generation_config = trainer.model.generation_config
    generation_config.eos_token_id = chat_stop_token_ids(tokenizer)
    generation_config.pad_token_id = tokenizer.pad_token_id
    out = save_stage_folder(trainer, tokenizer, metrics, generation_config, "SFT")
    sources = [d["id"] for d in (script_args.dataset_mixture or {}).get("datasets", [])] or [script_args.dataset_name]
    write_model_card(
        out,
        stage="sft",
        base_model=None if looks_local(model_args.model_name_or_path) else model_args.model_name_or_path,
        datasets=[str(s) for s in sources],
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        details={
            "base model": model_args.model_name_or_path,
            "LoRA": model_args.use_peft,
            "assistant-only loss": assistant_only_loss,
            "replay": (
                f"{script_args.replay_fraction:.0%} of the rows are blocks of {script_args.replay_dataset} "
                "(loss on every token)"
                if script_args.replay_dataset
                else "none"
            ),
            "max length": trainer.args.max_length,
        },
        chat_question="Who are you?",
    )


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path) -> PreTrainedModel:
    """Fold a saved LoRA adapter into its base model and save a plain `AutoModelForCausalLM` folder."""
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).merge_and_unload()
    model.save_pretrained(str(output_dir))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(output_dir))
    make_portable(output_dir)
    model.generation_config.save_pretrained(str(output_dir))
    return model
