"""The whole run as one command: every stage in order, skipping those whose outputs are up to date.

A stage runs when its recipe file exists in the recipes folder. It is up to date when its output folder holds a
stamp (`.chatforge_stage.json`) whose fingerprint matches the current one: a hash of the recipe's settings (its
parsed YAML, so comments and layout do not count), the stage's command-line arguments, the fingerprints of the
stages it reads from, and the chatforge version. So a changed setting reruns its stage and everything downstream,
and nothing else.

When a stage was interrupted (a stamp marked `started` with the same fingerprint), the rerun resumes from the
last checkpoint. When the fingerprint changed, the old output folder is moved aside to `<output>.previous`
rather than overwritten piecemeal, so a mix of old and new files never passes for a finished stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chatforge.configs import RecipeError

logger = logging.getLogger(__name__)
STAMP = ".chatforge_stage.json"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a script run on a recipe, writing one output folder."""

    name: str
    script: str
    recipe: str
    after: tuple[str, ...] = ()
    resumable: bool = False  # a training stage with checkpoints
    evaluates: str | None = None  # an evaluation stage: the stage whose model it scores
    launch: bool = False  # run under the pipeline's launcher (e.g. `accelerate launch`)
    resumes_itself: bool = False  # its script skips the work already in its output folder (datatrove tasks)


# In order. Stages whose recipe file is absent from the recipes folder are left out.
STAGES: tuple[Stage, ...] = (
    Stage("data", "run_data.py", "data.yaml"),
    Stage("web", "run_data.py", "data_web.yaml", after=("data",), resumes_itself=True),
    Stage("tokenizer", "train_tokenizer.py", "tokenizer.yaml", after=("data",)),
    Stage("pretrain", "run_pretrain.py", "pretrain.yaml", after=("data", "tokenizer"), resumable=True, launch=True),
    Stage("sft", "run_sft.py", "sft.yaml", after=("data", "pretrain"), resumable=True, launch=True),
    Stage("grpo", "run_grpo.py", "grpo.yaml", after=("data", "sft"), resumable=True),
    Stage("reward", "run_reward.py", "reward.yaml", after=("data", "sft"), resumable=True),
    Stage("dpo", "run_dpo.py", "dpo.yaml", after=("data", "sft"), resumable=True),
    Stage("rlhf", "run_rlhf.py", "rlhf.yaml", after=("data", "sft", "reward"), resumable=True),
    # Factuality (Llama 3's knowledge probing): what the SFT model gets wrong becomes "I don't know" data, then SFT.
    Stage("probe", "run_probe.py", "probe.yaml", after=("data", "sft")),
    Stage("factuality", "run_sft.py", "factuality.yaml", after=("data", "sft", "probe"), resumable=True, launch=True),
    Stage("eval_pretrain", "evaluate.py", "eval.yaml", after=("data", "pretrain"), evaluates="pretrain"),
    Stage("eval_sft", "evaluate.py", "eval.yaml", after=("data", "sft"), evaluates="sft"),
    Stage("eval_factuality", "evaluate.py", "eval.yaml", after=("data", "factuality"), evaluates="factuality"),
    Stage("eval_grpo", "evaluate.py", "eval.yaml", after=("data", "grpo"), evaluates="grpo"),
    Stage("eval_dpo", "evaluate.py", "eval.yaml", after=("data", "dpo"), evaluates="dpo"),
    Stage("eval_rlhf", "evaluate.py", "eval.yaml", after=("data", "rlhf"), evaluates="rlhf"),
)


@dataclass
class StageRun:
    """What happened to a stage in this pipeline run."""

    stage: Stage
    output: Path
    fingerprint: str
    status: str = "pending"  # ran, resumed, up to date, failed
    seconds: float | None = None  # this run's time, or the recorded time of the run that made the output
    command: list[str] = field(default_factory=list)


def _chatforge_version() -> str:
    from chatforge import __version__

    return __version__


def read_recipe(path: Path) -> dict:
    """A recipe's YAML mapping (clear error when it is not one)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def recipe_settings(recipe: dict) -> str:
    """A recipe's settings as canonical JSON: what its fingerprint hashes and where output folders are looked for."""
    return json.dumps(recipe, sort_keys=True, default=str)


def read_stamp(output: Path) -> dict | None:
    path = output / STAMP
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _write_stamp(output: Path, **data) -> None:
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / (STAMP + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(output / STAMP)  # atomic: a crash never leaves half a stamp


class Pipeline:
    """Plans and runs the stages found in `recipes_dir`."""

    def __init__(
        self,
        recipes_dir: str | Path,
        stages: list[str] | None = None,
        force: list[str] | None = None,
        launcher: list[str] | None = None,
        extra_args: dict[str, list[str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.recipes_dir = Path(recipes_dir)
        if not self.recipes_dir.is_dir():
            raise RecipeError(f"recipes folder not found: {self.recipes_dir}")
        self.launcher = launcher or [sys.executable]
        self.extra_args = extra_args or {}
        self.env = env or {}
        present = [s for s in STAGES if (self.recipes_dir / s.recipe).is_file()]
        names = {s.name for s in present}  # an evaluation runs only when the stage it scores is there
        present = [s for s in present if s.evaluates is None or s.evaluates in names]
        if not present:
            names = ", ".join(sorted({s.recipe for s in STAGES}))
            raise RecipeError(f"{self.recipes_dir}: no stage recipes found (expected some of {names})")
        by_name = {s.name: s for s in present}
        wanted = stages or [s.name for s in present]
        for name in [*wanted, *(force or [])]:
            if name not in by_name:
                known = ", ".join(by_name)
                raise RecipeError(f"no stage {name!r} in {self.recipes_dir}; stages there: {known}")
        self.force = set(force or [])
        self.recipes = {s.name: read_recipe(self.recipes_dir / s.recipe) for s in present}
        self.runs: dict[str, StageRun] = {}
        self.upstream = {s.name: self._upstream(s, present) for s in present}
        for stage in present:  # fingerprints of every present stage, so upstream changes propagate
            self.runs[stage.name] = StageRun(stage, self.output_of(stage), self._fingerprint(stage))
            self.runs[stage.name].command = self._command(stage)
        self.selected = [self.runs[name] for name in by_name if name in wanted]

    # ----------------------------------------------------------------------------------------- planning

    def output_of(self, stage: Stage) -> Path:
        """The folder a stage writes: its recipe's output_dir (eval stages: outputs/eval/<model stage>)."""
        if stage.evaluates:
            model_output = self.output_of(next(s for s in STAGES if s.name == stage.evaluates))
            return model_output.parent / "eval" / stage.evaluates
        output = self.recipes[stage.name].get("output_dir")
        if not output:
            raise RecipeError(f"{self.recipes_dir / stage.recipe}: needs an output_dir for the pipeline")
        return Path(output)

    def _upstream(self, stage: Stage, present: list[Stage]) -> tuple[str, ...]:
        """The stages `stage` reads from: its `after` list, plus any earlier stage whose output folder its recipe
        names (so `dataset_name: data/web/corpus` in pretrain.yaml makes pretraining depend on the web stage)."""
        if stage.evaluates:  # evaluation stages get their model on the command line, not from the recipe
            return stage.after
        text = recipe_settings(self.recipes[stage.name])  # values only: a folder named in a comment is no input
        named = []
        for other in present[: present.index(stage)]:
            output = self.recipes[other.name].get("output_dir") if not other.evaluates else None
            mentioned = output and re.search(re.escape(str(output).rstrip("/")) + r"(?=[/\s'\"]|$)", text, re.M)
            if mentioned and other.name not in stage.after:
                named.append(other.name)
        return (*stage.after, *named)

    def _command(self, stage: Stage) -> list[str]:
        args = [str(self.recipes_dir / stage.recipe)]
        if stage.evaluates:
            model = self.runs[stage.evaluates].output
            args += ["--model_name_or_path", str(model), "--output_dir", str(self.runs[stage.name].output)]
        args += self.extra_args.get(stage.name, [])
        launcher = self.launcher if stage.launch else [sys.executable]
        return [*launcher, str(SCRIPTS / stage.script), *args]

    def _fingerprint(self, stage: Stage) -> str:
        digest = hashlib.sha256()
        digest.update(recipe_settings(self.recipes[stage.name]).encode())
        digest.update(json.dumps(self.extra_args.get(stage.name, [])).encode())
        digest.update(_chatforge_version().encode())
        if stage.evaluates:
            digest.update(stage.evaluates.encode())
        for upstream in self.upstream[stage.name]:
            if upstream in self.runs:
                digest.update(self.runs[upstream].fingerprint.encode())
        return digest.hexdigest()[:16]

    def is_up_to_date(self, run: StageRun) -> bool:
        stamp = read_stamp(run.output)
        return (
            bool(stamp and stamp.get("state") == "finished" and stamp.get("fingerprint") == run.fingerprint)
            and run.stage.name not in self.force
        )

    def plan(self) -> list[tuple[str, str]]:
        """(stage, what will happen) for each selected stage, without running anything."""
        plan = []
        stale: set[str] = set()
        for run in self.selected:
            upstream_stale = any(u in stale for u in self.upstream[run.stage.name])
            if self.is_up_to_date(run) and not upstream_stale:
                plan.append((run.stage.name, "up to date"))
            else:
                stale.add(run.stage.name)
                plan.append((run.stage.name, "run"))
        return plan

    # ------------------------------------------------------------------------------------------ running

    def _prepare(self, run: StageRun) -> list[str]:
        """Move a stale output aside, or resume an interrupted run of the same recipe. Returns extra args."""
        stamp = read_stamp(run.output)
        if not run.output.exists():
            return []
        if stamp and stamp.get("fingerprint") == run.fingerprint and stamp.get("state") == "started":
            has_checkpoint = any(run.output.glob("checkpoint-*"))
            if run.stage.resumable and has_checkpoint and run.stage.name not in self.force:
                run.status = "resumed"
                return ["--resume_from_checkpoint", "last"]
            if run.stage.resumes_itself and run.stage.name not in self.force:
                run.status = "resumed"
                return []
        if run.stage.name == "data" or stamp is None and not any(run.output.iterdir()):
            return []  # the data stage rewrites its files deterministically; an empty folder has nothing to keep
        previous = run.output.with_name(run.output.name + ".previous")
        if previous.exists():
            shutil.rmtree(previous)
        run.output.rename(previous)
        logger.info("%s: moved the previous output to %s", run.stage.name, previous)
        return []

    def run(self, on_stage=None) -> list[StageRun]:
        """Run the selected stages in order; raises RuntimeError (naming the stage and its log) on failure."""
        stale: set[str] = set()
        for run in self.selected:
            if self.is_up_to_date(run) and not any(u in stale for u in self.upstream[run.stage.name]):
                run.status = "up to date"
                run.seconds = (read_stamp(run.output) or {}).get("seconds")
                if on_stage:
                    on_stage(run)
                continue
            stale.add(run.stage.name)
            command = run.command = run.command + self._prepare(run)
            _write_stamp(run.output, state="started", fingerprint=run.fingerprint, command=command)
            if on_stage:
                on_stage(run)
            start = time.perf_counter()
            env = {**os.environ, **self.env}
            result = subprocess.run(command, env=env)
            run.seconds = round(time.perf_counter() - start, 1)
            if result.returncode != 0:
                run.status = "failed"
                raise RuntimeError(f"stage {run.stage.name} failed (exit {result.returncode}): {' '.join(command)}")
            if run.status != "resumed":
                run.status = "ran"
            _write_stamp(
                run.output,
                state="finished",
                fingerprint=run.fingerprint,
                command=command,
                seconds=run.seconds,
                finished=time.strftime("%Y-%m-%d %H:%M:%S"),
            )
            if on_stage:
                on_stage(run)
        return self.selected
