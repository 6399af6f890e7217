"""Studies run as ``python -m experiments.<study>.run`` from the repository root.

The ``run_toy`` fixture runs a study's ``--toy`` setting as its own process on one CPU device,
exactly as a user would (the in-process tests have 8 simulated devices, which the toy batch
does not divide), then checks that ``--from-results`` re-renders the same markdown from the
raw results the run wrote.
"""

import importlib
import os
import subprocess
import sys

import pytest

from lcm import config as config_lib


def _run_toy(name: str, tmp_path) -> str:
    """Runs ``experiments.<name>.run --toy``; returns the results markdown it wrote."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", f"experiments.{name}.run", "--toy", "--quiet",
        f"--workdir={tmp_path / 'work'}", f"--out={out}",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=config_lib.REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / f"{name}.png").stat().st_size > 0
    text = (out / f"{name}.md").read_text()
    (out / f"{name}.png").unlink()
    importlib.import_module(f"experiments.{name}.run").main(["--from-results", f"--out={out}"])
    assert (out / f"{name}.md").read_text() == text
    assert (out / f"{name}.png").stat().st_size > 0
    return text


@pytest.fixture
def run_toy():
    """``run_toy(name, tmp_path) -> markdown``: the study's toy run as a user would start it."""
    return _run_toy
