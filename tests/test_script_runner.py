"""The test suite's fork server (tests/script_runner.py) stands for a fresh interpreter, and serves this process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import FORK_SERVER, FORKED, REPO, RUN_ENV, run_script


def test_a_forked_run_prints_and_exits_as_a_fresh_interpreter(tmp_path: Path) -> None:
    args = [str(REPO / "recipes" / "data.yaml"), "--source", "nope", "--output_dir", str(tmp_path)]
    forked, fresh = run_script("run_data.py", *args), run_script("run_data.py", *args, fresh=True)
    assert fresh.returncode == forked.returncode == 2
    assert fresh.stderr == forked.stderr and fresh.stdout == forked.stdout
    done = run_script("run_data.py", str(REPO / "recipes" / "data.yaml"), "--output_dir", str(tmp_path / "data"))
    assert done.returncode == 0 and (tmp_path / "data" / "corpus").is_dir()  # cwd, argv and files as usual


def test_the_server_serves_this_process_unless_its_environment_changed(tmp_path: Path) -> None:
    """Runs go to the server from any pytest test (pytest sets PYTEST_CURRENT_TEST) and after imports that set
    variables (vLLM sets eight), but not when something a library may read on import has changed."""
    import vllm  # noqa: F401

    run_script("run_data.py", "--help")  # the server runs
    env = {**os.environ, **RUN_ENV}
    assert FORK_SERVER.differences(env) == []
    assert FORK_SERVER.differences({**env, "HF_HOME": "/elsewhere"}) == ["HF_HOME"]
    with pytest.warns(UserWarning, match=r"run_data.py runs in a fresh interpreter: .* \(HF_HOME\)"):
        fallback = FORK_SERVER.run(
            [str(REPO / "scripts" / "run_data.py"), "--help"], tmp_path, {**env, "HF_HOME": "/elsewhere"}, 60
        )
    assert fallback is None


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_every_script_answers_help(script: str) -> None:
    """`--help` lists the options (a `%` in a help text once broke run_data.py's: argparse formats them)."""
    result = run_script(script, "--help")
    assert result.returncode == 0 and "--help" in result.stdout, result.stderr[-2000:]


def test_launcher_ranks_are_forked_and_a_failing_rank_stops_the_launch(tmp_path: Path) -> None:
    """Under `accelerate launch` with tests/forked.py, each rank is a fork of the server (the libraries already
    imported) with its launcher's settings applied: one thread per rank, the rank variables. A rank that fails ends
    the launch, and the launcher's SIGTERM reaches the other rank through its stand-in."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys, time\nimport torch\nrank = os.environ['RANK']\n"
        "print(f'rank {rank} preloaded={\"trl\" in sys.modules} threads={torch.get_num_threads()}', flush=True)\n"
        "if rank == '1' and sys.argv[1] == 'fail':\n    sys.exit(3)\n"
        "time.sleep(0 if sys.argv[1] == 'ok' else 120)\nprint(f'rank {rank} finished', flush=True)\n"
    )
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--mixed_precision", "no",
        "--config_file", str(REPO / "accelerate_configs" / "zero3.yaml"), FORKED,
    ]  # fmt: skip
    done = run_script(str(script), "ok", launcher=launcher, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line for line in done.stdout.splitlines() if "preloaded" in line) == [
        "rank 0 preloaded=True threads=1", "rank 1 preloaded=True threads=1",
    ]  # fmt: skip
    assert "rank 0 finished" in done.stdout and "rank 1 finished" in done.stdout
    failed = run_script(str(script), "fail", launcher=launcher, timeout=300)
    assert failed.returncode == 1 and "exitcode  : 3" in failed.stderr, failed.stderr[-3000:]
    assert "rank 0 finished" not in failed.stdout  # stopped, not waited for
