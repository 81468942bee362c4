"""`python tests/forked.py SCRIPT ARGS...` (or `-m MODULE ARGS...`): `python SCRIPT ARGS...` run in a fork of the
suite's server (tests/script_runner.py), for processes another program starts, such as the ranks of `accelerate
launch`. This process stays as the run's stand-in: it passes its stdin/stdout/stderr, forwards the signals a launcher
sends, and exits as the run did. Without a server (or one that refuses the environment) it becomes that interpreter.
Standard library only: it starts in ~30 ms."""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from script_runner import SOCKET_VARIABLE, request  # noqa: E402 (after the path; light: no third-party imports)


def main() -> None:
    argv = sys.argv[1:]
    path = os.environ.get(SOCKET_VARIABLE)
    answer: dict = {}
    if path:
        try:
            conn, answer = request(path, argv, os.getcwd(), dict(os.environ), [0, 1, 2])
        except OSError:
            answer = {}
    if "pid" not in answer:
        os.execv(sys.executable, [sys.executable, *argv])

    def forward(received: int, _frame: object) -> None:
        try:
            os.kill(answer["pid"], received)
        except ProcessLookupError:
            pass  # it has ended: its status is on the way

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = json.loads(conn.recv(1 << 16))["status"]
    if status < 0:  # ended by a signal: so does this process
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


if __name__ == "__main__":
    main()
