"""Run scripts in children of a warm fork server: a fresh process per run, without the import time.

A new interpreter spends ~7 s importing torch, transformers, TRL and vLLM before a script reads its recipe, and the
suite runs scripts dozens of times. The server (this file run as a program) imports them once, computing nothing (so
no thread pool exists yet and forking is safe, as it is for DataLoader workers), then forks a child per request. The
child is its own process, as with `python scripts/x.py`: the requester's stdin/stdout/stderr (passed over a Unix
socket), the interpreter's exit code, and whatever state the script changes dies with it. Requests come from the
test process (`ForkServer.run`) and from tests/forked.py, which stands in for `python` where another program starts
the process (the ranks `accelerate launch` starts), so launchers and their ranks are forked too.

Written by hand: `multiprocessing`'s fork server re-runs the parent's main module in every child (pytest's, here).
Three differences from a fresh interpreter, and how they are handled: (1) libraries read some environment variables
when imported (huggingface_hub's HF_HUB_OFFLINE, datasets' cache paths), so a run whose environment has a variable
that neither the server started with nor its imports set goes to a fresh interpreter instead, with a warning; the
variables a launcher sets for its ranks (RANK, MASTER_PORT, ACCELERATE_*, ...) are read when the script runs and
pass; (2) OMP_NUM_THREADS (the launchers' 1 thread per rank) and PYTHONPATH are read at interpreter start, so the
child applies them itself; (3) nothing a library prints on import reaches a forked run's stderr, so each script
keeps one error-output check in a fresh interpreter (`fresh=True` in conftest.run_script).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import shutil
import signal
import socket
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
SOCKET_VARIABLE = "CHATFORGE_FORK_SERVER"  # the server's socket, for tests/forked.py
IGNORED = frozenset({"PYTEST_CURRENT_TEST", SOCKET_VARIABLE})  # read by no library
# Set by `accelerate launch` and torchrun for each rank; read when the script runs (process group, accelerate's
# state), not on import. KMP_* are Intel OpenMP's, which torch's CPU wheel does not load (it has GNU OpenMP).
LAUNCH_PREFIXES = ("ACCELERATE_", "FSDP_", "TORCHELASTIC_", "KMP_")
LAUNCH_VARIABLES = frozenset({
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_NAME", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "PYTORCH_NVML_BASED_CUDA_CHECK",
})  # fmt: skip
APPLIED = frozenset({"OMP_NUM_THREADS", "PYTHONPATH"})  # read at interpreter start; the child applies them


def differences(env: dict[str, str], started: dict[str, str], imported: dict[str, str]) -> list[str]:
    """The variables of `env` that differ from both the server's start and what its imports set, which a library
    may have read on import. A variable the imports set may also be absent: a fresh interpreter would set it."""
    return sorted(
        key
        for key in (env.keys() | started.keys()) - IGNORED - LAUNCH_VARIABLES - APPLIED
        if not key.startswith(LAUNCH_PREFIXES)
        and env.get(key) not in (started.get(key), imported.get(key))
        and not (key not in env and key in imported)
    )


def _exit_code(code: object) -> int:
    """The status a Python interpreter exits with for `SystemExit(code)` (printing a non-int code, as it does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _become(request: dict, fds: list[int], started: dict[str, str], threads: int | None) -> None:
    """In the forked child: become `python *argv` with the requester's stdin/stdout/stderr, then exit like it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0)  # noqa: SIM115 (the process ends below)
    sys.stdout = open(1, "w")  # noqa: SIM115
    sys.stderr = open(2, "w")  # noqa: SIM115
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    os.chdir(request["cwd"])
    if threads is not None and env.get("OMP_NUM_THREADS") != started.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS") else threads)
    argv = request["argv"]
    module = argv[1] if argv[0] == "-m" else None
    sys.argv = argv[1:] if module else argv
    sys.path[0] = os.getcwd() if module else str(Path(argv[0]).parent)  # the server's was its own folder
    if env.get("PYTHONPATH") != started.get("PYTHONPATH"):
        sys.path[1:1] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
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


def serve(path: str) -> None:
    """Import PRELOAD, answer the environment that left on stdout, then serve requests on the socket at `path` until
    stdin ends: per request (JSON with argv, cwd, env, and three file descriptors) fork, answer the child's pid, and
    its exit status when it ends. A requester that hangs up first has its child killed."""
    started = dict(os.environ)
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001, S112 (the script will import what it needs itself)
            continue
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    imported = dict(os.environ)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a child ended: select wakes on the pipe
    print(json.dumps(imported), flush=True)
    waiting: set[socket.socket] = set()  # connected, request not read yet
    runs: dict[int, socket.socket | None] = {}  # child pid -> its requester (None: it hung up)
    while True:
        requesters = [conn for conn in runs.values() if conn is not None]
        readable, _, _ = select.select([sys.stdin, listener, wake_read, *waiting, *requesters], [], [])
        if sys.stdin in readable and not sys.stdin.readline():
            return
        for pid, conn in runs.items():
            if conn in readable and not conn.recv(1):  # the requester is gone: so is its run
                os.kill(pid, signal.SIGKILL)
                conn.close()
                runs[pid] = None
        if listener in readable:
            waiting.add(listener.accept()[0])
        for conn in waiting & set(readable):
            waiting.discard(conn)
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message) if message else None
            if request is None or (changed := differences(request["env"], started, imported)):
                if request is not None:  # (None: the requester hung up)
                    conn.send(json.dumps({"refused": changed}).encode())
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                for other in (listener, *waiting, *(c for c in runs.values() if c is not None), conn):
                    other.close()
                signal.set_wakeup_fd(-1)
                os.close(wake_read)
                os.close(wake_write)
                _become(request, fds, started, threads)
            for fd in fds:
                os.close(fd)
            conn.send(json.dumps({"pid": pid}).encode())
            runs[pid] = conn
        if wake_read in readable:
            os.read(wake_read, 1 << 16)
            while runs:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = runs.pop(pid)
                if conn is not None:
                    try:
                        conn.send(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode())
                    except OSError:
                        pass  # its requester hung up since the last look
                    conn.close()


def request(path: str, argv: list[str], cwd: str, env: dict[str, str], fds: list[int]) -> tuple[socket.socket, dict]:
    """Send one run to the server at `path`; the connection (to read the status from) and the first answer."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    socket.send_fds(conn, [json.dumps(dict(argv=argv, cwd=cwd, env=env)).encode()], fds)
    return conn, json.loads(conn.recv(1 << 16))


class ForkServer:
    """A client of one server process, started by the first run with that run's environment."""

    def __init__(self) -> None:
        self.socket_path = str(Path(tempfile.mkdtemp(prefix="fork_server_")) / "socket")
        self.env: dict[str, str] = {}  # the environment the server started with
        self.imported_env: dict[str, str] = {}  # and the one its imports left
        self.process: subprocess.Popen | None = None

    def _start(self, env: dict[str, str]) -> None:
        if self.process is None or self.process.poll() is not None:
            Path(self.socket_path).unlink(missing_ok=True)
            self.process = subprocess.Popen(
                [sys.executable, __file__, self.socket_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1,
            )  # fmt: skip
            atexit.register(self._stop, self.process)
            self.env, self.imported_env = dict(env), json.loads(self.process.stdout.readline())  # it listens now

    def _stop(self, process: subprocess.Popen) -> None:
        """End the server (it ends when its input does) and remove its socket."""
        process.stdin.close()
        process.wait(timeout=60)
        process.stdout.close()
        shutil.rmtree(Path(self.socket_path).parent, ignore_errors=True)

    def differences(self, env: dict[str, str]) -> list[str]:
        """What keeps a run under `env` off the server (none before it starts): see `differences`."""
        return differences(env, self.env, self.imported_env) if self.process is not None else []

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float, input: str | None = None
    ) -> subprocess.CompletedProcess | None:
        """`python *argv` in a forked child, reading `input` on stdin (else nothing); None, with a warning, when
        `env` has variables a library may have read on import with another value (run it in a fresh interpreter)."""
        self._start(env)
        with tempfile.TemporaryDirectory(prefix="script_run_") as folder:
            out, err, inp = (Path(folder) / name for name in ("stdout", "stderr", "stdin"))
            inp.write_text(input or "")
            files = [os.open(inp, os.O_RDONLY), *(os.open(f, os.O_WRONLY | os.O_CREAT) for f in (out, err))]
            try:
                conn, answer = request(self.socket_path, argv, str(cwd), env, files)
            finally:
                for fd in files:
                    os.close(fd)
            with conn:
                if "refused" in answer:
                    name = " ".join(argv[:2]) if argv[0] == "-m" else Path(argv[0]).name
                    warnings.warn(f"{name} runs in a fresh interpreter: the environment changed since "
                                  f"the fork server started ({', '.join(answer['refused'])})", stacklevel=3)  # fmt: skip
                    return None
                ready, _, _ = select.select([conn], [], [], timeout)
                if not ready:
                    os.kill(answer["pid"], signal.SIGKILL)
                status = json.loads(conn.recv(1 << 16))["status"]
                if not ready:
                    raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
                return subprocess.CompletedProcess(argv, status, out.read_text(), err.read_text())


if __name__ == "__main__":
    serve(sys.argv[1])
