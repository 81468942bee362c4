"""The test suite's fork server (tests/script_runner.py) stands for a fresh interpreter, and serves this process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FORK_SERVER, REPO, RUN_ENV, run_script


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
            str(REPO / "scripts" / "run_data.py"), ["--help"], tmp_path, {**env, "HF_HOME": "/elsewhere"}, 60
        )
    assert fallback is None
