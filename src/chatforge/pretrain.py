"""Pretraining from scratch with the HF `Trainer`: configs, the trainer, and the stage's `main`."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from torch.distributed.tensor import DTensor
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from chatforge.configs import DeviceDefaults, RecipeError, none_if_null
from chatforge.data import BlockCollator, load_corpus, looks_local, pack_dataset
from chatforge.distributed import gathered_weights, runs_generation_checks
from chatforge.evaluation.facts import fact_completion_accuracy, load_facts
from chatforge.flops import training_flops_per_token
from chatforge.hub import push_stage_output
from chatforge.model_card import write_model_card
from chatforge.modeling import ArchitectureArguments, build_model, build_model_config, count_parameters
from chatforge.outputs import save_stage_folder, save_weights
from chatforge.token_shards import bytes_per_token, is_token_shards, load_token_blocks

logger = logging.getLogger(__name__)


@dataclass
class PretrainScriptArguments:
    """Where the data and tokenizer come from, and what to measure at the end."""

    dataset_name: str = field(
        default="data/world/corpus",
        metadata={
            "help": "Corpus: a local folder `load_dataset` reads, a Hub id, or token shards from "
            "scripts/tokenize_corpus.py (read as they are, no tokenizing)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default="validation", metadata={"help": "Split for evaluation loss and bits per byte (None: no eval)."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the document text."})
    tokenizer_name_or_path: str = field(
        default="outputs/tokenizer", metadata={"help": "Tokenizer folder (from train_tokenizer.py) or Hub id."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per packed training sequence."})
    max_eval_blocks: int | None = field(default=None, metadata={"help": "Cap on evaluation blocks (None: all)."})
    facts_file: str | None = field(
        default="data/world/facts.jsonl",
        metadata={"help": "World facts table; after training, report held-in fact completion accuracy (None: skip)."},
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenization."})
    document_masking: bool = field(
        default=False,
        metadata={
            "help": "Attend only within each document of a packed block (position ids restart at every eos) "
            "instead of across the whole block. Fast with flash_attention_2 or flex_attention; sdpa and eager "
            "build a block-diagonal mask."
        },
    )

    def __post_init__(self) -> None:
        none_if_null(self, "facts_file", "dataset_test_split", "dataset_config")


@dataclass
class PretrainConfig(DeviceDefaults, TrainingArguments):
    """`TrainingArguments` with defaults for pretraining a small model; `bf16` is automatic when unset."""

    output_dir: str = field(default="outputs/pretrain", metadata={"help": "Where the model and checkpoints go."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Schedule after warmup."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps, or a fraction of all steps if < 1."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="steps", metadata={"help": "When to checkpoint."})
    save_steps: float = field(default=200, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate."})
    eval_steps: float | None = field(default=200, metadata={"help": "Evaluate every N steps."})
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Replace a NaN/inf loss by the running mean in the logs. Off: a diverging run shows as NaN, "
            "and each micro-batch spares a device-to-host sync (the check reads the loss on the host)."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Every parameter is used in each step, so DDP need not search for unused ones."},
    )


class PretrainTrainer(Trainer):
    """`Trainer` that adds bits per byte to evaluation logs and tokens per second to training logs, and counts
    FLOPs (`total_flos`) with `chatforge.flops`."""

    def __init__(self, *args, eval_bytes_per_token: float | None = None, tokens_per_step: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_bytes_per_token = eval_bytes_per_token
        self.tokens_per_step = tokens_per_step
        self._last_log: tuple[float, int] | None = None
        self._flops_per_token: dict[int, float] = {}

    def floating_point_ops(self, inputs: dict[str, torch.Tensor]) -> int:
        """Training FLOPs of a batch: chatforge.flops per token (attention and output head included), computed
        once per sequence length. The Trainer's own count walks every module of the model on every micro-batch,
        host time a GPU waits for when the host has to keep up."""
        ids = inputs.get("input_ids")
        if ids is None:
            return 0
        length = ids.shape[-1]
        if length not in self._flops_per_token:
            self._flops_per_token[length] = training_flops_per_token(self.model.config, length)
        return int(self._flops_per_token[length] * ids.numel())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs and self.eval_bytes_per_token:
            logs["eval_bits_per_byte"] = logs["eval_loss"] / math.log(2) / self.eval_bytes_per_token
        if "loss" in logs and self.tokens_per_step:
            now, step = time.perf_counter(), self.state.global_step
            if self._last_log is not None and step > self._last_log[1]:
                logs["tokens_per_second"] = round(
                    self.tokens_per_step * (step - self._last_log[1]) / (now - self._last_log[0])
                )
            self._last_log = (now, step)
        super().log(logs, start_time)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the stage's tokenizer, telling the user how to make it when it is missing."""
    if looks_local(name_or_path) and not Path(name_or_path).exists():
        raise RecipeError(
            f"tokenizer not found: {name_or_path}; train it first with "
            "`python scripts/train_tokenizer.py recipes/tokenizer.yaml`"
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise RecipeError(f"tokenizer {name_or_path} needs an eos and a pad token")
    return tokenizer


def resolve_checkpoint(training_args: TrainingArguments) -> str | None:
    """Map `resume_from_checkpoint` ('last'/'true'/a path) to a checkpoint folder, or None to start fresh."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("last", "true"):
        last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if last is None:
            logger.warning("no checkpoint in %s; starting from scratch", training_args.output_dir)
        return last
    if not Path(value).is_dir():
        raise RecipeError(f"resume_from_checkpoint: no checkpoint folder at {value}")
    return value


def parameter_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all ranks iff their weights are identical. Sharded weights
    (FSDP2's DTensors, ZeRO-3's partitions) are gathered whole first, so call this on every rank."""
    digest = hashlib.sha256()
    with gathered_weights(model):
        for name, param in sorted(model.state_dict().items()):
            if isinstance(param, DTensor):
                param = param.full_tensor()
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def validate(script_args: PretrainScriptArguments, training_args: PretrainConfig, arch: ArchitectureArguments) -> None:
    """Every check that can fail on the recipe alone, before data or models are touched."""
    arch.validate()
    if script_args.block_size < 8:
        raise RecipeError(f"block_size must be at least 8, got {script_args.block_size}")
    if arch.max_position_embeddings and arch.max_position_embeddings < script_args.block_size:
        raise RecipeError(
            f"max_position_embeddings ({arch.max_position_embeddings}) < block_size ({script_args.block_size})"
        )
    if arch.attn_implementation == "flex_attention" and (training_args.use_cpu or not torch.cuda.is_available()):
        raise RecipeError(
            "attn_implementation: flex_attention trains on a GPU only (PyTorch's flex attention has no backward on "
            "CPU); use sdpa here, e.g. --attn_implementation sdpa"
        )
    if script_args.facts_file and not Path(script_args.facts_file).is_file():
        raise RecipeError(
            f"facts file not found: {script_args.facts_file}; run `python scripts/run_data.py recipes/data.yaml` "
            "or set facts_file: null"
        )
    resolve_checkpoint(training_args)


def train(
    script_args: PretrainScriptArguments,
    training_args: PretrainConfig,
    arch: ArchitectureArguments,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[Trainer, dict]:
    """Train a model from scratch as the recipe says; save it with metrics, plots and a model card.

    Returns the trainer (its `.model` is the trained model) and the run's metrics.
    """
    validate(script_args, training_args, arch)
    transformers.set_seed(training_args.seed)
    tokenizer = load_tokenizer(script_args.tokenizer_name_or_path)
    splits = [script_args.dataset_train_split] + (
        [script_args.dataset_test_split] if script_args.dataset_test_split else []
    )
    shards = is_token_shards(script_args.dataset_name)
    if shards:  # already tokenized by scripts/tokenize_corpus.py: read the blocks straight from its shards
        packed = load_token_blocks(script_args.dataset_name, splits, script_args.block_size, tokenizer)
    else:
        hint = "create it with `python scripts/run_data.py recipes/data.yaml`"
        corpus = load_corpus(
            script_args.dataset_name, splits, script_args.text_column, script_args.dataset_config, hint
        )
        with training_args.main_process_first(desc="tokenizing and packing"):
            packed = {
                split: pack_dataset(
                    ds,
                    tokenizer,
                    script_args.block_size,
                    script_args.text_column,
                    script_args.dataset_num_proc,
                    desc=f"packing {split}",
                )
                for split, ds in corpus.items()
            }
    train_dataset = packed[script_args.dataset_train_split]
    eval_dataset = packed.get(script_args.dataset_test_split) if script_args.dataset_test_split else None
    if len(train_dataset) == 0:
        raise RecipeError(f"the corpus gives no full block of {script_args.block_size} tokens; lower block_size")
    eval_bytes_per_token = None
    if eval_dataset is not None:
        if shards:
            if script_args.max_eval_blocks:
                eval_dataset = torch.utils.data.Subset(
                    eval_dataset, range(min(len(eval_dataset), script_args.max_eval_blocks))
                )
            eval_bytes_per_token = bytes_per_token(
                packed[script_args.dataset_test_split], tokenizer, len(eval_dataset)
            )
        else:
            if script_args.max_eval_blocks:
                eval_dataset = eval_dataset.select(range(min(len(eval_dataset), script_args.max_eval_blocks)))
            eval_bytes_per_token = sum(eval_dataset["num_bytes"]) / (len(eval_dataset) * script_args.block_size)
    if eval_dataset is None or len(eval_dataset) == 0:
        eval_dataset = None
        training_args.eval_strategy = "no"

    config = build_model_config(arch, tokenizer, script_args.block_size)
    model = build_model(config, seed=training_args.seed)
    # No KV cache while training: it is never read, and with one transformers ignores document position ids.
    model.config.use_cache = False
    n_params = count_parameters(model)
    tokens_per_step = (
        script_args.block_size
        * training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * training_args.world_size
    )
    logger.info(
        "%s model with %.2fM parameters; %d training blocks of %d tokens (%.2fM tokens), %d tokens per step",
        arch.architecture,
        n_params / 1e6,
        len(train_dataset),
        script_args.block_size,
        len(train_dataset) * script_args.block_size / 1e6,
        tokens_per_step,
    )

    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=BlockCollator(tokenizer.eos_token_id, script_args.document_masking),
        callbacks=callbacks,
        eval_bytes_per_token=eval_bytes_per_token,
        tokens_per_step=tokens_per_step,
    )
    checkpoint = resolve_checkpoint(training_args)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)

    checksum = parameter_checksum(trainer.model)
    logger.info("rank %d parameter sha256: %s", training_args.process_index, checksum)
    metrics = {
        "train_loss": train_result.training_loss,
        "global_step": trainer.state.global_step,
        "parameters": n_params,
        "train_tokens": trainer.state.global_step * tokens_per_step,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "tokens_per_second": round(trainer.state.global_step * tokens_per_step / train_result.metrics["train_runtime"])
        if train_result.metrics.get("train_runtime")
        else None,
    }
    if eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        metrics["eval_loss"] = eval_metrics["eval_loss"]
        metrics["eval_bits_per_byte"] = eval_metrics["eval_bits_per_byte"]
    trainer.model.config.use_cache = True  # generation from here on, and the saved model, use a KV cache
    if script_args.facts_file and runs_generation_checks(trainer.model, trainer.is_world_process_zero()):
        facts = fact_completion_accuracy(trainer.model, tokenizer, load_facts(script_args.facts_file, "train"))
        metrics["fact_accuracy"] = facts["accuracy"]
        metrics["fact_baseline"] = facts["baseline"]
        metrics["fact_per_relation"] = facts["per_relation"]
        for example in facts["examples"] if trainer.is_world_process_zero() else []:
            logger.info(
                "fact %s | %r -> %r", "ok " if example["ok"] else "BAD", example["prompt"], example["completion"]
            )

    save_weights(trainer)  # on every rank: sharded (FSDP, ZeRO-3) weights are gathered from all
    if trainer.is_world_process_zero():
        save_pretrained_model(trainer, tokenizer, metrics, script_args, arch)
    trainer.accelerator.wait_for_everyone()
    push_stage_output(training_args)
    return trainer, metrics


def save_pretrained_model(
    trainer: Trainer,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
    script_args: PretrainScriptArguments,
    arch: ArchitectureArguments,
) -> None:
    """Write the standard HF folder: weights, config, tokenizer, generation config, metrics, plot, card."""
    generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        max_new_tokens=128,
    )
    out = save_stage_folder(trainer, tokenizer, metrics, generation_config, f"pretraining ({arch.architecture})")
    write_model_card(
        out,
        stage="pretraining",
        base_model=None,
        datasets=[script_args.dataset_name],
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        details={
            "architecture": arch.architecture,
            "parameters": f"{metrics['parameters'] / 1e6:.2f}M",
            "layers x width": f"{arch.num_hidden_layers} x {arch.hidden_size}",
            "context": script_args.block_size,
            "attention": "within each document" if script_args.document_masking else "across the packed block",
            "tokenizer": script_args.tokenizer_name_or_path,
        },
    )
