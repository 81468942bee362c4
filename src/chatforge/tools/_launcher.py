"""Sandbox launcher: confine this process, then run the model's code. Standard library only.

Started by `chatforge.tools.python_sandbox` as `python -I -S _launcher.py CONFIG_JSON` in an empty working
directory with an empty environment, its own session, and stdout/stderr on one pipe. Steps:

1. outer (this process): unshare new PID and network namespaces (plus a user namespace when not root, so an
   unprivileged user can do it), then fork once;
2. init (PID 1 of the new PID namespace): set rlimits, no_new_privs, a Landlock ruleset (writes only in the
   working directory, no TCP, no signals or abstract unix sockets outside), drop root to a fresh uid, write
   what it applied as one JSON line to the status pipe, fork the user process and reap every process until
   that one exits, then write its exit status and exit. When init exits (or is killed) the kernel kills every
   process left in its PID namespace, so nothing the code started can outlive the run;
3. user process: RLIMIT_CPU, then exec `python -I main.py` (or, without a network namespace, a bootstrap that
   installs an audit hook blocking sockets first).

Hand-written with ctypes (no library): the three Landlock syscalls and unshare(2) are not in Python 3.11's
`os`, and the PyPI Landlock bindings are pre-release; the calls are small and their failure is reported.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import struct
import sys

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE = 38, 4
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
# Filesystem rights by Landlock ABI version (uapi/linux/landlock.h).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)  # + TRUNCATE, IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI >= 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI >= 6

# Installed before the user's code when no network namespace could be made. An audit hook is a speed bump,
# not a wall (ctypes could undo it; so ctypes and starting other programs, which would not carry the hook,
# are refused too); the kernel-side blocks above are the real ones.
AUDIT_BOOTSTRAP = """
import runpy, sys
BLOCKED = ("socket.", "ctypes.", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system")
def _hook(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError(f"{event} is not allowed in the sandbox")
sys.addaudithook(_hook)
del _hook
runpy.run_path("main.py", run_name="__main__")
"""

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def make_namespaces(report: dict) -> None:
    """New PID and network namespaces; a user namespace first when not root (mapping our uid to itself)."""
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWPID | CLONE_NEWNET
    try:
        if uid == 0:
            _check(libc.unshare(flags), "unshare")
        else:
            _check(libc.unshare(CLONE_NEWUSER | flags), "unshare")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
            report["user_namespace"] = True
        report["pid_namespace"] = report["network_namespace"] = True
    except OSError as error:
        report["namespace_error"] = str(error)
        report["pid_namespace"] = report["network_namespace"] = False


def landlock(workdir: str, report: dict) -> None:
    """Allow reads everywhere, writes only beneath `workdir` (and /dev/null); deny TCP; scope signals."""
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        report["landlock"] = 0
        return
    fs = FS_RIGHTS_BY_ABI[max(v for v in FS_RIGHTS_BY_ABI if v <= abi)]
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = _check(libc.syscall(SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0), "landlock_create_ruleset")
    rules = [("/", FS_EXECUTE | FS_READ_FILE | FS_READ_DIR), (workdir, fs), ("/dev/null", fs & FS_FILE_RIGHTS)]
    for path, allowed in rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = struct.pack("=Qi", allowed, fd)  # struct landlock_path_beneath_attr is packed
            _check(libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, rule, 0), path)
        finally:
            os.close(fd)
    _check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    report["landlock"] = abi


def confine(config: dict, report: dict) -> None:
    """rlimits, no_new_privs, Landlock, then drop root (in init, before the user process is forked)."""
    limits = config["limits"]
    megabyte = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * megabyte,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_mb"] * megabyte,) * 2)
    # RLIMIT_NPROC counts the processes of a uid (in a user namespace: of that uid inside it) and is not
    # enforced for root: so it only holds with a fresh uid (we were root) or a user namespace (we were not).
    if config["uid"] is not None or report.get("user_namespace"):
        nproc = limits["max_processes"] + 1  # + this init process
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        report["process_limit"] = True
    else:
        report["process_limit"] = False
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    try:
        landlock(config["workdir"], report)
    except OSError as error:
        report["landlock"] = 0
        report["landlock_error"] = str(error)
    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")  # hide our fds from the user code
    report["uid"] = os.getuid()


def init(config: dict, status) -> None:
    """PID 1: confine, start the user process, reap until it exits, report its status."""
    report = config["report"]
    confine(config, report)
    argv = [config["python"], "-I", "-B", "-X", "utf8"]
    argv += ["main.py"] if report["network_namespace"] else ["-c", AUDIT_BOOTSTRAP]
    report["network"] = "namespace" if report["network_namespace"] else "audit hook"
    status.write(json.dumps({"setup": report}) + "\n")
    status.flush()
    child = os.fork()
    if child == 0:
        cpu = config["limits"]["cpu_seconds"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        os.execve(config["python"], argv, config["env"])
    while True:  # reap orphans too: zombies would count against RLIMIT_NPROC
        pid, wait_status = os.waitpid(-1, 0)
        if pid == child:
            break
    status.write(json.dumps({"exit_code": os.waitstatus_to_exitcode(wait_status)}) + "\n")
    status.flush()


def main() -> None:
    config = json.loads(sys.argv[1])
    status_fd = config["status_fd"]
    os.set_inheritable(status_fd, False)
    status = os.fdopen(status_fd, "w")
    config["report"] = report = {}
    make_namespaces(report)
    pid = os.fork()
    if pid == 0:
        try:
            init(config, status)
        except BaseException as error:  # noqa: BLE001 - report any setup failure to the parent, then stop
            status.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
            status.flush()
            os._exit(125)
        os._exit(0)
    _, wait_status = os.waitpid(pid, 0)
    os._exit(max(0, os.waitstatus_to_exitcode(wait_status)))


if __name__ == "__main__":
    main()
