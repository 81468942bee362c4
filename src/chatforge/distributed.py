"""Which process does what when a stage trains on several: the checks that generate after (or during) training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


def weights_sharded(model: torch.nn.Module) -> bool:
    """True when each process holds only a shard of the weights: FSDP2 (DTensor parameters) or DeepSpeed ZeRO-3
    (partitioned parameters carry a `ds_id`). A forward pass of such a model is a collective: every rank joins."""
    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def runs_generation_checks(model: torch.nn.Module, is_main_process: bool) -> bool:
    """Whether this process runs a stage's generation checks (fact or chat accuracy, judge, held-out score).

    The main process alone when every rank holds the whole model (one process, DDP, ZeRO-2); every rank when the
    weights are sharded, since the main process cannot run a forward pass alone. The checks are seeded, so all
    ranks generate the same tokens and join the same number of forward passes; only the main one logs and writes.
    """
    return is_main_process or weights_sharded(model)


def reshard(model: torch.nn.Module) -> None:
    """Put FSDP2 parameters back into shards after forward passes outside training (generation during a run).

    FSDP2 keeps the root module's parameters gathered after a forward pass, expecting a backward pass next; code
    that reads the parameters as shards afterwards (TRL's weight sync to vLLM, a checkpoint) then finds plain
    tensors. A no-op for models that are not sharded by FSDP2."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def gathered_weights(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every DeepSpeed ZeRO-3 parameter is whole on this rank (outside, each holds an empty
    placeholder and its shard). Call it on every rank: the gather is a collective. A no-op for other models."""
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        yield


@contextmanager
def loads_whole(training_args: object) -> Iterator[None]:
    """Models loaded inside the block hold all their weights on every rank.

    Under DeepSpeed ZeRO-3, `from_pretrained` partitions a model as it loads it, which suits the models an engine
    will wrap (the policy, TRL's reference model) but leaves a model that is only called (a reward model used as
    a reward function) with empty placeholders. A no-op without DeepSpeed."""
    from transformers.integrations import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is None or not is_deepspeed_zero3_enabled():
        yield
        return
    # transformers partitions at load while a ZeRO-3 config is registered; accelerate's
    # `zero3_init_context_manager(enable=False)` registers the same stage-3 config again, so it is unregistered here
    # and the plugin's own (the one registered by the training arguments) put back after
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(plugin.dschf)
