"""Run scripts in children of a warm fork server: a fresh process per run, without the import time.

A new interpreter spends ~7 s importing torch, transformers, TRL and vLLM before a script reads its recipe, and the
suite runs scripts dozens of times. The server (this file run as a program) imports them once, computing nothing (so
no thread pool exists yet and forking is safe, as it is for DataLoader workers), then forks a child per request. The
child is its own process, as with `python scripts/x.py`: output captured at the file-descriptor level (libraries and
subprocesses included), the interpreter's exit code, and whatever state the script changes dies with it.

Written by hand: `multiprocessing`'s fork server re-runs the parent's main module in every child (pytest's, here).
Two differences from a fresh interpreter, and how they are handled: (1) libraries read some environment variables
when imported (huggingface_hub's HF_HUB_OFFLINE, datasets' cache paths), so a run whose environment has a variable
that neither the server started with nor its imports set goes to a fresh interpreter instead, with a warning;
(2) nothing a library prints on import reaches a forked run's stderr, so each script keeps one error-output check in
a fresh interpreter (`fresh=True` in conftest.run_script).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

# What the scripts import; a module that fails to import is left to the script.
PRELOAD = [
    "torch",
    "transformers",
    "transformers.trainer",
    "datasets",
    "peft",
    "trl",
    "vllm",
    *(f"chatforge.{name}" for name in (
        "pretrain", "sft", "grpo", "rlhf", "dpo", "reward", "factuality", "evaluation.runner", "tool_loop",
        "vllm_backend", "generation", "throughput", "tokenizer", "token_shards", "web", "world", "pipeline",
    )),
]  # fmt: skip


def _exit_code(code: object) -> int:
    """The status a Python interpreter exits with for `SystemExit(code)` (printing a non-int code, as it does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _become_script(request: dict) -> None:
    """In the forked child: become `python script *args` with output to the request's files, then exit like it."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, key in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(0)  # noqa: SIM115 (the process ends below)
    sys.stdout = open(1, "w")  # noqa: SIM115
    sys.stderr = open(2, "w")  # noqa: SIM115
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path.insert(0, str(Path(script).parent))
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:  # noqa: BLE001 (printed as the interpreter prints an uncaught exception)
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # what interpreter shutdown runs (logging handlers, engines' cleanups)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Import PRELOAD and answer the environment that left; then per request line on stdin: fork, answer the child's
    pid, wait, answer its exit status."""
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001, S112 (the script will import what it needs itself)
            continue
    answers = sys.stdout
    answers.write(json.dumps(dict(os.environ)) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _become_script(request)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


class ForkServer:
    """A client of one server process, started by the first run with that run's environment."""

    IGNORED = frozenset({"PYTEST_CURRENT_TEST"})  # pytest's name of the running test, read by no library

    def __init__(self) -> None:
        self.env: dict[str, str] = {}  # the environment the server started with
        self.imported_env: dict[str, str] = {}  # and the one its imports left
        self.process: subprocess.Popen | None = None

    def _start(self, env: dict[str, str]) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1,
            )  # fmt: skip
            atexit.register(self._stop, self.process)
            self.env, self.imported_env = dict(env), json.loads(self.process.stdout.readline())
        return self.process

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        """End the server: it ends when its input does."""
        process.stdin.close()
        process.wait(timeout=60)
        process.stdout.close()

    def differences(self, env: dict[str, str]) -> list[str]:
        """The variables of `env` that differ from both the server's start and what its imports set (none before it
        starts): a run under `env` with any of them could differ from a fresh interpreter's. A variable the imports
        set may also be absent: a fresh interpreter would set it when it imports the same libraries."""
        if self.process is None:
            return []
        return sorted(
            key
            for key in (env.keys() | self.env.keys()) - self.IGNORED
            if env.get(key) not in (self.env.get(key), self.imported_env.get(key))
            and not (key not in env and key in self.imported_env)
        )

    def run(
        self, script: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess | None:
        """`python script *args` in a forked child; None, with a warning, when `env` has variables the server
        lacks (run it in a fresh interpreter then)."""
        if changed := self.differences(env):
            warnings.warn(f"{Path(script).name} runs in a fresh interpreter: the environment changed since the fork "
                          f"server started ({', '.join(changed)})", stacklevel=3)  # fmt: skip
            return None
        server = self._start(env)
        with tempfile.TemporaryDirectory(prefix="script_run_") as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = dict(script=script, args=args, cwd=str(cwd), env=env, stdout=str(out), stderr=str(err))
            server.stdin.write(json.dumps(request) + "\n")
            pid = json.loads(server.stdout.readline())["pid"]
            ready, _, _ = select.select([server.stdout], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            status = json.loads(server.stdout.readline())["status"]
            if not ready:
                raise subprocess.TimeoutExpired([script, *args], timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess([script, *args], status, out.read_text(), err.read_text())


if __name__ == "__main__":
    serve()
