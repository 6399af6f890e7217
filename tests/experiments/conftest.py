"""Experiment scripts are run as ``python experiments/<name>.py``: import them the same way.

The ``run_toy`` fixture runs a script's ``--toy`` setting as its own process on one CPU
device, exactly as a user would (the in-process tests have 8 simulated devices, which the toy
batch does not divide).
"""

import os
import subprocess
import sys

import pytest

from lcm import config as config_lib

EXPERIMENTS = str(config_lib.REPO_ROOT / "experiments")
if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)


def _run_toy(name: str, tmp_path) -> str:
    """Runs ``experiments/<name>.py --toy``; returns the results markdown it wrote."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, f"{EXPERIMENTS}/{name}.py", "--toy", "--quiet",
        f"--workdir={tmp_path / 'work'}", f"--out={out}",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / f"{name}.png").stat().st_size > 0
    return (out / f"{name}.md").read_text()


@pytest.fixture
def run_toy():
    """``run_toy(name, tmp_path) -> markdown``: the script's toy run as a user would start it."""
    return _run_toy
