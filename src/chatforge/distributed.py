"""Which process does what when a stage trains on several: the checks that generate after (or during) training."""

from __future__ import annotations

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
