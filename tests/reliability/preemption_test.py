"""Crash and preemption harness: ``python -m lcm.train`` SIGKILLed at random points, including
during an asynchronous checkpoint write, and restarted until done, must end with the same
parameters, optimizer state and loss curve as one uninterrupted run, bit for bit (CPU, 1 device).

The oracle is the uninterrupted run of the same command. Kill points are seeded: a random step
(waited for in the progress output) plus a random delay, or the moment a temporary orbax
checkpoint directory appears (the save is then in flight; the test checks the directory was left
behind, i.e. the kill really interrupted the write).
"""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lcm import config as config_lib

TINY = str(config_lib.REPO_ROOT / "configs" / "tiny.py")

DETERMINISTIC = ("step", "loss", "grad_norm", "lr", "skipped_steps", "nonfinite", "loss_spike")


def _command(workdir, base, **more):
    settings = {**base, **more}
    return [
        sys.executable, "-m", "lcm.train", f"--config={TINY}", f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in settings.items()),
    ]  # fmt: skip


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(
        PYTHONPATH=str(config_lib.REPO_ROOT),  # this checkout's lcm, whatever is installed
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        # Restarts load the compiled step instead of compiling again (same executable).
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


class _Run:
    """One ``python -m lcm.train`` process writing its output to a file."""

    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=config_lib.REPO_ROOT
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def steps_done(self) -> int:
        done = [
            int(x.split("/")[0][5:]) for x in self.output().splitlines() if x.startswith("step ")
        ]
        return max(done, default=0)

    def finish(self, timeout=300) -> int:
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code


def _tmp_checkpoints(workdir) -> list[str]:
    directory = pathlib.Path(workdir, "checkpoints")
    if not directory.is_dir():
        return []
    return [p.name for p in directory.iterdir() if "tmp" in p.name]


def _finished_checkpoints(workdir) -> list[str]:
    """Checkpoint step directories that finished writing (orbax renames them from tmp)."""
    directory = pathlib.Path(workdir, "checkpoints")
    if not directory.is_dir():
        return []
    return [p.name for p in directory.iterdir() if p.name.isdigit()]


def _kill_at_step(run, step, delay, deadline):
    while run.proc.poll() is None and time.monotonic() < deadline:
        if run.steps_done() >= step:
            time.sleep(delay)
            run.proc.kill()
            return True
        time.sleep(0.01)
    return False


def _kill_during_save(run, workdir, deadline):
    started = False
    while run.proc.poll() is None and time.monotonic() < deadline:
        # Wait for training to start: the manager has cleaned up older partial saves by then.
        started = started or run.steps_done() > 0
        if started and _tmp_checkpoints(workdir):
            run.proc.kill()
            return True
        time.sleep(0.001)
    return False


def _records(workdir):
    path = pathlib.Path(workdir, "metrics.jsonl")
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(x).items() if k in DETERMINISTIC} for x in lines]


def _crash_and_compare(tmp_path, base, saved_state, *, num_steps, kills, seed, **settings):
    """Runs the reference, then the killed-and-restarted run; compares everything."""
    env = _env(tmp_path)
    settings = {
        "train.num_steps": num_steps, "train.checkpoint_every": 2, "train.max_checkpoints": 3,
        **settings,
    }  # fmt: skip
    reference = tmp_path / "reference"
    run = _Run(_command(reference, base, **settings), env, tmp_path / "reference.log")
    assert run.finish() == 0, run.output()

    rng = random.Random(seed)
    workdir = tmp_path / "killed"
    cmd = _command(workdir, base, **settings)
    log, attempts = [], 0
    while len(log) < len(kills) and attempts < 3 * len(kills):
        attempts += 1
        kind = kills[len(log)]
        run = _Run(cmd, env, tmp_path / f"killed{attempts}.log")
        deadline = time.monotonic() + 240
        if kind == "save":
            killed = _kill_during_save(run, workdir, deadline)
        else:
            # A random step of this run plus a random delay of up to 0.2 s.
            done = max((r["step"] for r in _records(workdir)), default=0)
            target = rng.randint(done + 1, max(done + 1, num_steps - 2))
            killed = _kill_at_step(run, target, rng.uniform(0.0, 0.2), deadline)
        code = run.finish()
        assert code in (0, -signal.SIGKILL), run.output()
        if code == 0:  # finished before the kill point came: start over from scratch
            shutil.rmtree(workdir)
            continue
        assert killed, run.output()
        left_behind = _tmp_checkpoints(workdir)
        if kind == "save" and not left_behind:
            continue  # the write completed between seeing it and the kill: try again
        log.append((kind, run.steps_done(), left_behind))
    assert len(log) == len(kills), (log, attempts)

    # A kill can land before the first save finishes (an async save on a loaded machine), and
    # then the last run rightly starts from scratch; with a finished checkpoint it must resume.
    finished = _finished_checkpoints(workdir)
    run = _Run(cmd, env, tmp_path / "final.log")
    assert run.finish() == 0, run.output()
    assert ("resumed from step" in run.output()) == bool(finished), (finished, run.output())
    assert not _tmp_checkpoints(workdir), "partial checkpoints were not cleaned up"

    # The loss curve: one record per step, in order, equal to the reference bit for bit.
    assert _records(workdir) == _records(reference), log
    assert [r["step"] for r in _records(workdir)] == list(range(1, num_steps + 1))
    want, got = saved_state(reference, num_steps), saved_state(workdir, num_steps)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    return log


def test_sigkill_anywhere_then_resume_is_bit_exact(tmp_path, tiny_overrides, saved_state):
    log = _crash_and_compare(
        tmp_path, tiny_overrides, saved_state, num_steps=8, kills=("step", "save"), seed=0
    )
    assert log[1][2], "the save kill must leave a partial checkpoint behind"


@pytest.mark.slow
def test_many_sigkills_with_grad_accumulation_bit_exact(tmp_path, tiny_overrides, saved_state):
    log = _crash_and_compare(
        tmp_path,
        tiny_overrides,
        saved_state,
        num_steps=16,
        kills=("step", "save", "step", "save", "step", "step"),
        seed=1,
        **{"train.grad_accum_steps": 2, "train.checkpoint_every": 1},
    )
    assert sum(1 for kind, _, left in log if kind == "save" and left) == 2
