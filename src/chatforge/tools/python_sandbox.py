"""The `python` tool: run model-written code in a sandboxed subprocess and return what it printed.

>>> result = PythonSandbox(SandboxLimits(cpu_seconds=2, wall_seconds=5)).run("print(sum(range(10)))")
>>> result.ok, result.output, result.error
(True, '45\\n', None)
>>> result.to_tool_text()  # what the model reads inside <tool_response>
'45'

Isolation (see `_launcher.py` for the order in which it is applied; `result.isolation` says what held):
- time: RLIMIT_CPU on the code's process; a wall-clock deadline after which the whole run is killed;
- memory: RLIMIT_AS; file size: RLIMIT_FSIZE; output: at most `max_output_bytes` are read, then the run is killed;
- processes: a new PID namespace whose init is killed at the end, which kills every process the code started;
  RLIMIT_NPROC bounds their number. It is not enforced for root, so as root the code runs as a fresh unused
  uid (one per run: concurrent runs neither share the count nor can signal each other), and otherwise in a
  user namespace, where the count is per namespace;
- network: a new, empty network namespace (no interface but a down loopback); where none can be made, an
  audit hook refuses sockets, plus Landlock's TCP rules;
- filesystem: Landlock (Linux >= 5.13) lets the code read but write only in its working directory, an empty
  temporary folder removed afterwards; a dropped root cannot read root's private files either;
- environment: empty but for PATH, HOME (the working directory), TMPDIR and LANG; `python -I` ignores
  PYTHON* variables, the user site and the current directory. Other processes' /proc/PID/environ stay
  unreadable (another uid, and Landlock's ptrace rules).
A part that cannot be set up is reported in `isolation` (for example Landlock on an old kernel), except that
the sandbox refuses to run code as root: `SandboxError`, never an unconfined run.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from chatforge.configs import RecipeError

LAUNCHER = Path(__file__).with_name("_launcher.py")
ErrorKind = Literal["timeout", "cpu_limit", "memory", "output_limit", "exception", "killed"]
# Fresh uids for runs as root come from here: inside the range systemd leaves to containers, far from users.
UID_RANGE = range(1_800_000_000, 1_870_000_000)
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
INTERPRETERS = ("/usr/bin/python3", "/usr/local/bin/python3")


class SandboxError(RuntimeError):
    """The sandbox could not be set up on this machine (the code was not run)."""


@dataclass
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    cpu_seconds: int = 5  # CPU time of the code's process (RLIMIT_CPU, whole seconds)
    wall_seconds: float = 10.0  # wall-clock time of the whole run, then everything is killed
    memory_mb: int = 512  # address space of each process (RLIMIT_AS)
    max_processes: int = 16  # processes the code may have at once, itself included (RLIMIT_NPROC)
    max_output_bytes: int = 8192  # stdout + stderr kept; more stops the run
    max_file_mb: int = 16  # size of any file it writes (RLIMIT_FSIZE)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise RecipeError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        if not isinstance(self.cpu_seconds, int):
            raise RecipeError(f"SandboxLimits.cpu_seconds must be a whole number, got {self.cpu_seconds!r}")


@dataclass
class SandboxResult:
    """What a run produced: `output` is stdout and stderr interleaved, decoded, truncated to the limit."""

    ok: bool
    output: str
    error: ErrorKind | None
    exit_code: int | None  # negative: killed by that signal; None: killed before it could report one
    seconds: float
    note: str | None = None  # why the run stopped early, as the model should read it
    isolation: dict = field(default_factory=dict)  # what the launcher applied (uid, namespaces, landlock, ...)

    def to_tool_text(self) -> str:
        """The text of the tool response: the output, then a note when the run was stopped."""
        parts = [self.output.rstrip("\n")] if self.output.strip() else []
        if self.note:
            parts.append(self.note)
        if not parts:
            return "(no output)" if self.ok else f"(no output, exit code {self.exit_code})"
        return "\n".join(parts)


def _others_can_run(path: str) -> bool:
    """Whether a user other than the owner can reach, read and execute `path` (permission bits only)."""
    real = Path(os.path.realpath(path))
    if not real.is_file():
        return False
    for directory in real.parents:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(real).st_mode
    return bool(mode & stat.S_IXOTH and mode & stat.S_IROTH)


def processes_of(uid: int) -> list[int]:
    """Ids of the live processes whose real uid is `uid` (read from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path("/proc", entry, "status").read_text()
        except OSError:  # exited meanwhile
            continue
        match = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
        if match and int(match.group(1)) == uid and "State:\tZ" not in status:
            pids.append(int(entry))
    return pids


def kill_processes_of(uid: int, rounds: int = 100) -> bool:
    """SIGKILL every process of `uid` until none is left (a fork loop refills between scans); True if none."""
    for _ in range(rounds):
        pids = processes_of(uid)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    return not processes_of(uid)


def _fresh_uid() -> int:
    """A uid with no account and no process, for one run as root."""
    rng = random.SystemRandom()
    for _ in range(100):
        uid = rng.choice(UID_RANGE)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not processes_of(uid):
                return uid
    raise SandboxError(f"no free uid found in {UID_RANGE}")


def _remove_tree(path: str) -> None:
    """Remove the working directory, even where the code took away its own write permissions."""

    def make_writable_and_retry(function, failed_path, _exc_info) -> None:
        os.chmod(os.path.dirname(failed_path), stat.S_IRWXU)
        function(failed_path)

    handler = {"onexc" if sys.version_info >= (3, 12) else "onerror": make_writable_and_retry}
    shutil.rmtree(path, **handler)


@dataclass
class PythonSandbox:
    """Runs Python code under `limits`; see the module docstring for how each limit is enforced."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    python: str | None = None  # the code's interpreter; default: this one, or a system one when running as root
    uid: int | None = None  # as root: the uid to run as (default: a fresh unused uid per run)

    def interpreter(self) -> str:
        """The interpreter the code runs with: as root it must be reachable by an unprivileged uid."""
        if self.python is not None:
            if not shutil.which(self.python):
                raise RecipeError(f"python interpreter not found: {self.python}")
            return shutil.which(self.python)
        if os.geteuid() != 0:
            return sys.executable
        # Root's interpreter often lives under /root (e.g. pyenv), which the dropped uid cannot read.
        for candidate in (sys.executable, getattr(sys, "_base_executable", ""), *INTERPRETERS):
            if candidate and _others_can_run(candidate):
                return candidate
        raise SandboxError(
            "running as root, and no Python interpreter is readable by an unprivileged user; "
            "install one (e.g. /usr/bin/python3) or pass PythonSandbox(python=...)"
        )

    def run(self, code: str) -> SandboxResult:
        """Run `code` as `main.py` in a fresh working directory; never raises for anything the code does."""
        python = self.interpreter()
        root = os.geteuid() == 0
        if root and self.uid == 0:
            raise RecipeError("PythonSandbox(uid=0) would run model-written code as root; leave uid unset")
        uid = (self.uid if self.uid is not None else _fresh_uid()) if root else None
        workdir = tempfile.mkdtemp(prefix="chatforge-sandbox-")
        status_read, status_write = os.pipe()
        process = None
        try:
            Path(workdir, "main.py").write_text(code)
            if uid is not None:
                os.chown(workdir, uid, uid)
            config = {
                "python": python,
                "workdir": workdir,
                "uid": uid,
                "status_fd": status_write,
                "limits": asdict(self.limits),
                "env": {"PATH": SANDBOX_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"},
            }
            start = time.monotonic()
            process = subprocess.Popen(
                [python, "-I", "-S", str(LAUNCHER), json.dumps(config)],
                cwd=workdir,
                env=config["env"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(status_write,),
            )
            os.close(status_write)
            status_write = -1
            deadline = start + self.limits.wall_seconds
            output, stopped = self._collect(process, deadline)
            if stopped is None:  # the output ended; the code may still run (it closed stdout): wait for it
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    stopped = "timeout"
            self._stop(process)
            seconds = time.monotonic() - start
            report = self._read_status(status_read)
            process.stdout.close()
        finally:
            if process is not None and process.returncode is None:  # interrupted: stop the run
                self._stop(process)
            if status_write >= 0:
                os.close(status_write)
            os.close(status_read)
            if uid is not None:
                kill_processes_of(uid)  # a belt to the PID namespace's braces
            _remove_tree(workdir)
        if "error" in report:
            raise SandboxError(f"the sandbox could not be set up: {report['error']}")
        if "setup" not in report and stopped is None:
            raise SandboxError(f"the sandbox launcher failed: {output.decode(errors='replace')[-2000:]}")
        text = output.decode("utf-8", errors="replace").replace(workdir + os.sep, "")
        exit_code = report.get("exit_code")
        error, note = self._classify(stopped, exit_code, text)
        isolation = report.get("setup", {}) | {"python": python}
        ok = error is None and exit_code == 0
        return SandboxResult(ok, text, error, exit_code, seconds, note, isolation)

    def _collect(self, process: subprocess.Popen, deadline: float) -> tuple[bytes, str | None]:
        """Read the output until EOF, the deadline or the output limit; returns it and why it stopped early."""
        fd = process.stdout.fileno()
        output = bytearray()
        limit = self.limits.max_output_bytes
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return bytes(output), "timeout"
                if selector.select(min(remaining, 0.1)):
                    data = os.read(fd, 65536)
                    if not data:  # every process holding the pipe is gone
                        return bytes(output), None
                    output += data
                    if len(output) > limit:
                        return bytes(output[:limit]), "output_limit"
                elif process.poll() is not None:  # done; only a stray process (no PID namespace) holds the pipe
                    return bytes(output), None

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        """Kill the launcher's process group (killing the PID namespace's init kills all the code's processes)."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()

    @staticmethod
    def _read_status(fd: int) -> dict:
        """The launcher's JSON lines (setup report, exit code or error), merged."""
        os.set_blocking(fd, False)
        data = b""
        try:
            while chunk := os.read(fd, 65536):
                data += chunk
        except BlockingIOError:
            pass
        report: dict = {}
        for line in data.decode(errors="replace").splitlines():
            try:
                report.update(json.loads(line))
            except json.JSONDecodeError:
                pass
        return report

    def _classify(self, stopped: str | None, exit_code: int | None, text: str) -> tuple[ErrorKind | None, str | None]:
        """The error kind of a run and the note the model reads."""
        limits = self.limits
        if stopped == "timeout":
            return "timeout", f"[stopped: still running after {limits.wall_seconds:g} s]"
        if stopped == "output_limit":
            return (
                "output_limit",
                f"[output truncated: more than {limits.max_output_bytes} bytes; the run was stopped]",
            )
        if exit_code is None:
            return "killed", "[killed before it finished]"
        if exit_code == -signal.SIGXCPU:
            return "cpu_limit", f"[stopped: used more than {limits.cpu_seconds} s of CPU time]"
        if exit_code < 0:
            try:
                name = signal.Signals(-exit_code).name
            except ValueError:
                name = str(-exit_code)
            return "killed", f"[killed by signal {name}]"
        if exit_code > 0:
            lines = text.strip().splitlines()
            if lines and re.match(r"MemoryError\b", lines[-1]):
                return "memory", f"[out of memory: the limit is {limits.memory_mb} MB]"
            return "exception", None if lines else f"[exit code {exit_code}]"
        return None, None
