"""Shared fixtures: the embedded world, its tokenizer and the default pretraining run, built once per session."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import script_runner
import yaml

from chatforge.world import World, WorldConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FORK_SERVER = script_runner.ForkServer()
FORKED = str(REPO / "tests" / "forked.py")  # `python` for processes a launcher starts: forked from FORK_SERVER too
RUN_ENV = {  # how run_script runs every script
    "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", script_runner.SOCKET_VARIABLE: FORK_SERVER.socket_path,
}  # fmt: skip
SHARED_DATA = REPO.parent / "shared" / "data"
# A small world for fast tests of the generator and its chat data (the default world is ~6x larger).
SMALL = WorldConfig(seed=3, num_people=40, num_heldout_people=10, num_cities=10, num_countries=3, num_organisations=8)
# The tiny transformer most tests train (ArchitectureArguments fields): learns the world's text in a few dozen steps.
TINY_ARCH = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128
)


def tiny_arch_args() -> list[str]:
    """TINY_ARCH as command-line arguments for scripts/run_pretrain.py."""
    return [arg for key, value in TINY_ARCH.items() for arg in (f"--{key}", str(value))]


def run_script(
    script: str,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 1800,
    launcher: list[str] | None = None,
    fresh: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """Run `scripts/<script>` in its own process, offline, capturing output and reading `input` on stdin (else
    nothing), under `launcher` if given (a command starting with this Python). Forked from a server that has
    imported the libraries (tests/script_runner.py; ~7 s less per run; a launcher's ranks too, where its training
    script is tests/forked.py), or in a new interpreter with `fresh=True` (to see what imports print) or when the
    environment has changed since the server started."""
    env = {**os.environ, **RUN_ENV}
    command = [*(launcher or [sys.executable]), str(REPO / "scripts" / script), *args]
    if not fresh and command[0] == sys.executable:
        result = FORK_SERVER.run(command[1:], cwd or REPO, env, timeout, input)
        if result is not None:
            return result
    return subprocess.run(
        command, cwd=cwd or REPO, env=env, input=input or "", capture_output=True, text=True, timeout=timeout
    )


def rank_checksums(stderr: str) -> dict[str, str]:
    """The parameter SHA-256 each rank of a multi-process pretraining run logged, by rank."""
    return dict(re.findall(r"rank (\d) parameter sha256: ([0-9a-f]{64})", stderr))


def run_script_here(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run `scripts/<script>` inside the test process, from the repository root, capturing what it prints.

    For the bad-input checks that end before any training: a fresh interpreter spends ~7 s importing torch,
    transformers and TRL before it reads the recipe. Each script keeps at least one check through `run_script`,
    where anything a library prints on import would also reach stderr."""
    argv, cwd = sys.argv, os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()
    status = 0
    try:
        sys.argv = [str(REPO / "scripts" / script), *args]
        os.chdir(REPO)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return subprocess.CompletedProcess([script, *args], status, stdout.getvalue(), stderr.getvalue())


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Assert the process failed with exit 2 and a single `error:` line on stderr; return that line."""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def world() -> World:
    """The small world, generated in memory."""
    return World.generate(SMALL)


@pytest.fixture(scope="module")
def default_world() -> World:
    """The default world, generated in memory."""
    return World.generate(WorldConfig())


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default world written by the default data recipe."""
    out = tmp_path_factory.mktemp("world")
    result = run_script("run_data.py", str(REPO / "recipes" / "data.yaml"), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tokenizer recipe trained on the default world."""
    out = tmp_path_factory.mktemp("tokenizer")
    result = run_script(
        "train_tokenizer.py",
        str(REPO / "recipes" / "tokenizer.yaml"),
        "--dataset_name",
        str(world_dir / "corpus"),
        "--chat_datasets",  # the recipe's data/world/... conversations, in this session's world
        str(world_dir / "sft"),
        str(world_dir / "tools_sft"),
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def default_pretrain(world_dir: Path, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default pretraining recipe, unchanged but for paths: the run `make demo` does (minutes)."""
    out = tmp_path_factory.mktemp("pretrain")
    result = run_script(
        "run_pretrain.py",
        str(REPO / "recipes" / "pretrain.yaml"),
        "--dataset_name",
        str(world_dir / "corpus"),
        "--facts_file",
        str(world_dir / "facts.jsonl"),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"\ndefault pretraining: {json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)})}")
    return out


@pytest.fixture(scope="session")
def default_sft(default_pretrain: Path, world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default SFT recipe on the default base model: the SFT run of `make demo`, with paths changed and batches
    grouped by length (`train_sampling_strategy: group_by_length`). The recipe's random batches are 57% padding;
    grouped ones trained in 300 s instead of 571-627 s on 2 cores, with every floor the tests check still held
    by a wide margin (measured: chat facts 0.676 against 0.644-0.744 for the recipe, identity 0.52 against
    0.39-0.48, level-0 math 0.49 against 0.42). The recipe keeps random batches: the README's results are its.
    Held-out loss is measured twice instead of five times."""
    out = tmp_path_factory.mktemp("sft")
    mixture = yaml.safe_load((REPO / "recipes" / "sft.yaml").read_text())["dataset_mixture"]
    for entry in mixture["datasets"]:  # the recipe's data/world/... folders, in this session's world
        entry["id"] = str(world_dir / Path(entry["id"]).relative_to("data/world"))
    mixture = json.dumps(mixture)
    result = run_script(
        "run_sft.py",
        str(REPO / "recipes" / "sft.yaml"),
        "--model_name_or_path",
        str(default_pretrain),
        "--dataset_mixture",
        mixture,
        "--chat_eval_file",
        str(world_dir / "chat_eval.jsonl"),
        "--replay_dataset",
        str(world_dir / "corpus"),
        "--train_sampling_strategy",
        "group_by_length",
        "--eval_steps",  # held-out loss at steps 500 and 1000, not every 200 (3.5 s each; training is unchanged)
        "500",
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"\ndefault SFT: {json.dumps(metrics)}")
    return out


@contextlib.contextmanager
def _environment_kept():
    """Leave os.environ as found: an in-process vLLM engine sets LD_PRELOAD, LOCAL_WORLD_SIZE and nine more, and
    datatrove's executor six DATATROVE_* variables, which would otherwise reach every later subprocess (and keep
    script runs off the fork server)."""
    saved = dict(os.environ)
    yield
    current = os.environ.get("PYTEST_CURRENT_TEST")  # pytest's own, which it updates and removes itself
    os.environ.clear()
    os.environ.update(saved)
    if current is not None:
        os.environ["PYTEST_CURRENT_TEST"] = current


@pytest.fixture(autouse=True)
def _environment_restored():
    """Every test leaves os.environ as it found it."""
    with _environment_kept():
        yield


@pytest.fixture(autouse=True, scope="module")
def _module_environment_restored():
    """Every test module's fixtures do too (set up before any test's: autouse fixtures come first in a scope)."""
    with _environment_kept():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread (`pytestmark = pytest.mark.usefixtures("one_thread")`): as fast
    alone, and far faster when another job shares the 2 cores (measured 0.13 s against 4.5 s per PPO step)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_chat_model(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised Qwen3 with the chat tokenizer, saved like an SFT output (read-only for tests)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_chat")
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
