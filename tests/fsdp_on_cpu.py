"""Run a script with accelerate's FSDP2 path on CPU processes: `python fsdp_on_cpu.py SCRIPT ARGS...` under
`accelerate launch --config_file accelerate_configs/fsdp.yaml`.

torch's `fully_shard` runs on CPU tensors over gloo, but accelerate only turns FSDP on for accelerator devices:
on CPU it settles on plain data parallel (MULTI_CPU) and ignores the FSDP plugin. This wrapper makes the
accelerator state keep the FSDP plugin when it would otherwise fall back, so the tests run the real sharded
path: DTensor parameters, sharded checkpoints, the full state dict gathered for the final save, resumption.
Test-only; nothing in chatforge imports it.
"""

import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType

_original_init = accelerate.state.AcceleratorState.__init__


def _init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs) -> None:
    _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        # later AcceleratorState() calls refresh from the process state: it must say FSDP too
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


accelerate.state.AcceleratorState.__init__ = _init_keeping_fsdp

if __name__ == "__main__":
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
