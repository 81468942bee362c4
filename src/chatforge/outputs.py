"""Writing a stage's output folder: the parts every training stage shares."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Trainer

from chatforge.plots import plot_loss_curves
from chatforge.tokenizer import make_portable


def save_weights(trainer: Trainer) -> None:
    """Write the final weights (or adapter) to output_dir. Call it on every rank: under FSDP or DeepSpeed ZeRO-3
    the full weights are gathered from all ranks (FSDP switches from sharded checkpoints to a full state dict for
    this save), and only the main process writes."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    with tied_weights_gathered_once(trainer):
        trainer.save_model(trainer.args.output_dir)


@contextmanager
def tied_weights_gathered_once(trainer: Trainer) -> Iterator[None]:
    """Make a gathered state dict hold tied weights (the output head tied to the embedding) as one tensor.

    Gathering sharded weights (FSDP, ZeRO-3) returns each name as its own copy, so `save_pretrained`, which finds
    tied weights by shared storage, writes a tied head twice (measured under FSDP2: `lm_head.weight` beside the
    embedding). That costs vocab x hidden floats per file and makes vLLM load the model untied first. Every name
    of a shared parameter is pointed at the first name's tensor, and `save_pretrained` then keeps one.
    """
    accelerator = trainer.accelerator
    gather = accelerator.get_state_dict

    def gather_tied_once(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        state_dict = gather(model, *args, **kwargs)
        if state_dict:  # ranks that do not write get an empty dict
            share_tied_weights(state_dict, accelerator.unwrap_model(model))
        return state_dict

    accelerator.get_state_dict = gather_tied_once
    try:
        yield
    finally:
        del accelerator.get_state_dict  # the class's method again


def share_tied_weights(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Point every name of a parameter `model` shares between modules at one tensor of `state_dict`, in place."""
    names_by_parameter: dict[int, list[str]] = defaultdict(list)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_parameter[id(parameter)].append(name)
    for names in names_by_parameter.values():
        present = [name for name in names if name in state_dict]
        for name in present[1:]:
            state_dict[name] = state_dict[present[0]]


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
