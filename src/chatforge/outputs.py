"""Writing a stage's output folder: the parts every training stage shares."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerBase, Trainer

from chatforge.plots import plot_loss_curves
from chatforge.tokenizer import make_portable


def save_weights(trainer: Trainer) -> None:
    """Write the final weights (or adapter) to output_dir. Call it on every rank: under FSDP or DeepSpeed ZeRO-3
    the full weights are gathered from all ranks (FSDP switches from sharded checkpoints to a full state dict for
    this save), and only the main process writes."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(trainer.args.output_dir)


def save_stage_folder(
    trainer: Trainer,
    tokenizer: PreTrainedTokenizerBase,
    metrics: dict,
    generation_config: GenerationConfig | None,
    plot_title: str,
) -> Path:
    """On the main process, after `save_weights` on every rank: the tokenizer, generation config (None for models
    that do not generate, such as reward models), metrics.json, trainer state and loss plot."""
    out = Path(trainer.args.output_dir)
    tokenizer.save_pretrained(str(out))
    make_portable(out)
    if generation_config is not None:
        trainer.model.generation_config = generation_config
        generation_config.save_pretrained(str(out))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    plot_loss_curves(trainer.state.log_history, out / "loss_curve.png", title=plot_title)
    return out
