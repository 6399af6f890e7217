"""Training on two processes (jax.distributed on localhost, 2 x 2 CPU devices, gloo collectives)
with data sharded per host, a checkpoint and a resume, against one process on the same global
batches.

Oracle: one process (this one) running the same jitted step on the concatenation of both hosts'
batches from ``load_data(..., process_index=h, process_count=2)``. Tolerance: float32 rounding of
differently ordered cross-device reductions, rtol 1e-5 on losses and 1e-4 (atol 1e-6) on
parameters.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lcm import config as config_lib
from lcm import data as data_lib
from lcm import model as model_lib
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from lcm.train import loop, optimizer
from lcm.train import state as state_lib
from lcm.train import step as step_lib

WORKER = pathlib.Path(__file__).with_name("_multihost_worker.py")
NUM_STEPS, STOP_AFTER = 4, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _reference(config, devices):
    """Per-step losses and final params of one process fed both hosts' batches, concatenated."""
    hosts = [
        data_lib.load_data(config, process_index=h, process_count=2).train_iterator()
        for h in range(2)
    ]
    config.mesh.shape = (len(devices), 1, 1, 1)
    mesh = mesh_lib.make_mesh(config.mesh, devices=devices)
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    model = model_lib.Transformer(model_lib.build_spec(config))
    tx = optimizer.make_optimizer(config.train)
    b, t = config.data.batch_size, config.seq_len
    losses = []
    with sharding.use_mesh(mesh, rules):
        _, shardings = state_lib.state_shardings(model, tx, mesh, rules, batch_size=b, seq_len=t)
        state = state_lib.init_state(
            model, tx, shardings, config.train.seed, batch_size=b, seq_len=t
        )
        batch_sharding = sharding.named_sharding(mesh, ("batch", "length"), rules)
        step = step_lib.jit_train_step(
            step_lib.make_train_step(model, tx, z_loss=0.0, grad_accum_steps=1),
            shardings,
            batch_sharding,
        )
        to_device = loop.batch_to_device(config, mesh, batch_sharding)
        for _ in range(NUM_STEPS):
            parts = [next(it) for it in hosts]
            batch = {k: np.concatenate([p[k] for p in parts]) for k in step_lib.BATCH_KEYS}
            state, metrics = step(state, to_device(batch))
            losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


def _launch(workdir, settings):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # PYTHONPATH: this checkout's lcm, whatever the environment has installed.
    env = {**env, "PYTHONPATH": str(config_lib.REPO_ROOT)}
    cmd = [sys.executable, str(WORKER), "{i}", str(port), str(workdir), json.dumps(settings)]
    return [
        subprocess.Popen(
            [arg.format(i=i) if arg == "{i}" else arg for arg in cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=config_lib.REPO_ROOT,
        )
        for i in range(2)
    ]


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_train_checkpoint_resume_like_one(tmp_path, tiny_overrides, saved_state):
    settings = {
        **tiny_overrides,
        "train.num_steps": NUM_STEPS,
        "train.checkpoint_every": STOP_AFTER,
        "stop_after": STOP_AFTER,
    }
    config = config_lib.load_config(str(config_lib.REPO_ROOT / "configs" / "tiny.py"))
    config.update_from_flattened_dict({k: v for k, v in settings.items() if k != "stop_after"})
    want_losses, want_params = _reference(config, jax.devices()[:4])  # also fills the token cache

    workdir = tmp_path / "run"
    procs = _launch(workdir, settings)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        assert f"devices=4 steps {STOP_AFTER} then {NUM_STEPS}" in out, out
        assert f"resumed from step {STOP_AFTER}" in out, out

    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in records], want_losses, rtol=1e-5)
    got = saved_state(workdir, NUM_STEPS)["params"]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want_params
    )


@pytest.mark.slow
@pytest.mark.multidevice
def test_sigterm_on_one_host_stops_both_at_the_same_saved_step(tmp_path, tiny_overrides):
    """JAX's preemption service spreads one host's SIGTERM; every host saves the same step."""
    settings = {**tiny_overrides, "train.num_steps": 100_000, "train.checkpoint_every": 1000}
    procs = _launch(tmp_path / "run", {**settings, "stop_after": None})
    seen = []
    for line in procs[0].stdout:
        seen.append(line)
        if line.startswith("[0] step 3/"):
            procs[1].send_signal(signal.SIGTERM)
            break
    outputs = ["".join(seen) + procs[0].communicate(timeout=600)[0]]
    outputs.append(procs[1].communicate(timeout=600)[0])
    saved = []
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
        saved.append(int(out.split("preemption: saved step ")[1].split(",")[0]))
    assert saved[0] == saved[1] >= 3, outputs
    assert (tmp_path / "run" / "checkpoints" / str(saved[0])).is_dir()


def test_stop_flag_leaves_sigterm_to_jax_with_several_processes():
    """With several processes JAX's preemption notifier must keep SIGTERM: no Python handler."""
    before = signal.getsignal(signal.SIGTERM)
    with loop._StopFlag(enabled=False) as stop:
        assert signal.getsignal(signal.SIGTERM) is before
    with loop._StopFlag() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
