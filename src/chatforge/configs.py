"""Recipe parsing: a YAML file plus `--key value` overrides into the stage's dataclasses.

Every script calls :func:`parse_recipe` exactly as alignment-handbook and open-r1 scripts call
`TrlParser`: `python scripts/run_X.py recipes/X.yaml [--key value ...]`. On top of `trl.TrlParser`
it adds what a user needs before any expensive work starts: a missing file, a YAML that is not a
mapping, or an unknown key each give one clear line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A problem with the user's recipe, data or paths, reported as one line before heavy work."""


def _field_names(dataclass_types: Sequence[type]) -> set[str]:
    names: set[str] = set()
    for dataclass_type in dataclass_types:
        names.update(f.name for f in dataclasses.fields(dataclass_type) if f.init)
    return names


def load_recipe_file(path: str | Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Read a recipe YAML and check that every key belongs to one of `dataclass_types`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise RecipeError(f"{path}: expected a YAML mapping of `key: value`, got {type(config).__name__}")
    known = _field_names(dataclass_types) | {"env"}
    for key in config:
        if key not in known:
            close, owners = _closest_field(str(key), known, dataclass_types)
            hint = f" (did you mean '{close}'?)" if close else ""
            raise RecipeError(f"{path}: unknown key '{key}'{hint}; valid keys are the fields of {owners}")
    return config


def split_recipe_arg(args: list[str]) -> tuple[str | None, list[str]]:
    """The recipe a command line names (`RECIPE.yaml ...` first, or `--config RECIPE.yaml`) and the other args."""
    if args and args[0].endswith((".yaml", ".yml")) and not args[0].startswith("-"):
        return args[0], args[1:]
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise RecipeError("--config needs a path to a recipe YAML")
        return args[index + 1], args[:index] + args[index + 2 :]
    return None, args


def parse_recipe(dataclass_types: Sequence[type], args: Iterable[str] | None = None) -> tuple:
    """Parse `RECIPE.yaml [--key value ...]` (or `--config RECIPE.yaml ...`) into dataclass instances.

    Command-line values override the recipe's. Returns one instance per type, in order.
    """
    from trl import TrlParser

    recipe, args = split_recipe_arg(list(sys.argv[1:] if args is None else args))
    if recipe is not None:
        load_recipe_file(recipe, dataclass_types)  # clear errors first
        args = ["--config", recipe, *args]
    parser = TrlParser(dataclass_types=list(dataclass_types))
    try:
        return tuple(parser.parse_args_and_config(args))
    except ValueError as err:
        message = str(err).splitlines()[0] if str(err) else repr(err)
        unused = re.search(r"not used by the HfArgumentParser: \[(.*)\]", message)
        if unused:  # the recipe's keys were checked above: what is left over came from the command line
            raise RecipeError(_unknown_option(unused.group(1), dataclass_types)) from None
        raise RecipeError(f"{recipe or 'command line'}: {message}") from None


def _closest_field(name: str, known: set[str], dataclass_types: Sequence[type]) -> tuple[str | None, str]:
    """The known name closest to a mistyped one (None if none is close), and the classes whose fields they are."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return (close[0] if close else None), ", ".join(t.__name__ for t in dataclass_types)


def _unknown_option(leftovers: str, dataclass_types: Sequence[type]) -> str:
    """One line for command-line arguments no dataclass field takes, with the closest field name."""
    first = leftovers.split(",")[0].strip().strip("'\"")
    if not first.startswith("--"):
        return f"command line: unexpected argument {first!r} (options are --name value)"
    name = first[2:].split("=", 1)[0]
    close, owners = _closest_field(name.replace("-", "_"), _field_names(dataclass_types), dataclass_types)
    hint = f" (did you mean --{close}?)" if close else ""
    return f"command line: unknown option --{name}{hint}; the options are the fields of {owners}"


def none_if_null(args: Any, *names: str) -> None:
    """Turn `null` / `none` / empty strings given on the command line into None (YAML's null already is)."""
    for name in names:
        if str(getattr(args, name)).lower() in ("null", "none", ""):
            setattr(args, name, None)


def apply_device_defaults(args: Any) -> None:
    """Fill in the device-dependent defaults of a `TrainingArguments` before its own `__post_init__` runs.

    - `bf16=None` means bf16 exactly where the GPU supports it (on CPU it is ~20x slower, not faster).
    - Launched as several processes on a machine without a GPU (`accelerate launch` with
      accelerate_configs/cpu_ddp.yaml), the Trainer only joins the process group when `use_cpu` is set;
      otherwise every process trains alone as rank 0. So set it there.
    - `use_liger_kernel` with `torch_compile` gets a warning: that pair failed to compile (docs/benchmarks.md).
    """
    import logging
    import os

    import torch

    if getattr(args, "use_liger_kernel", False) and getattr(args, "torch_compile", False):
        logging.getLogger(__name__).warning(
            "use_liger_kernel with torch_compile failed to compile with liger-kernel 0.8.5 and torch 2.11 (dynamo "
            "cannot trace Liger's Triton kernels; docs/benchmarks.md): if it fails, keep one of the two"
        )

    if getattr(args, "bf16", False) is None:
        args.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        args.use_cpu = True


@dataclasses.dataclass
class DeviceDefaults:
    """chatforge's defaults for every training config, mixed in before the TRL/transformers class:
    `class ChatDPOConfig(DeviceDefaults, DPOConfig)`. bf16 only where the GPU supports it, no gradient
    checkpointing (TRL turns both on; on CPU they make training ~20x slower), and `resume_from_checkpoint`
    as a recipe field ('last' resumes from the newest checkpoint in output_dir)."""

    bf16: bool | None = dataclasses.field(
        default=None, metadata={"help": "bf16 mixed precision; unset: on where the GPU supports it."}
    )
    gradient_checkpointing: bool = dataclasses.field(
        default=False, metadata={"help": "Trade compute for activation memory."}
    )
    resume_from_checkpoint: str | None = dataclasses.field(
        default=None, metadata={"help": "A checkpoint folder, or 'last' / 'true' for the newest in output_dir."}
    )

    def __post_init__(self) -> None:
        apply_device_defaults(self)
        super().__post_init__()


def root_cause(err: BaseException) -> str:
    """First line of the innermost exception of a chain: libraries (datasets, fsspec, torch.compile) wrap the
    useful message in generic ones."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a RecipeError into `error: ...` on stderr and exit status 2, with no traceback."""
    try:
        yield
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_training_script(train: Any, dataclass_types: Sequence[type], quiet_transformers: bool = False) -> dict:
    """The body of every `scripts/run_<stage>.py`: parse the recipe, log, train, print the metrics on rank 0.

    `train(script_args, training_args, third)` is the stage's train function and `dataclass_types` the three
    argument classes it takes, in that order. Recipe errors exit with one `error:` line (status 2).
    """
    import json
    import logging

    import transformers

    with exit_on_user_error():
        script_args, training_args, third = parse_recipe(dataclass_types)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        if quiet_transformers:
            transformers.utils.logging.set_verbosity_error()
        else:
            transformers.utils.logging.set_verbosity_warning()
        _, metrics = train(script_args, training_args, third)
        if training_args.process_index == 0:
            print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=2))
            print(f"saved to {training_args.output_dir}")
    return metrics
