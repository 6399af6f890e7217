"""The training loop end to end: learning, exact resume, SIGTERM, sharded equivalence."""

import json
import os
import signal
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

TINY = str(config_lib.REPO_ROOT / "configs" / "tiny.py")


def _tiny(**train):
    config = config_lib.load_config(TINY)
    for key, value in train.items():
        config.train[key] = value
    return config


def _records(workdir):
    """The deterministic fields of every metrics.jsonl record (timings excluded)."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    keep = ("step", "loss", "grad_norm", "lr")
    return [{k: v for k, v in json.loads(x).items() if k in keep} for x in lines]


def test_loss_decreases_and_resume_is_exact(tmp_path):
    config = _tiny(num_steps=8, log_every=1, eval_every=0, checkpoint_every=4)
    full = loop.train(config, str(tmp_path / "full"), log=lambda s: None)
    losses = [r["loss"] for r in _records(tmp_path / "full")]
    assert losses[-1] < losses[0] - 0.3, losses

    # Stop after 5 steps (checkpoint forced at 5, off the checkpoint_every grid), resume, finish.
    for _ in range(2):
        out = loop.train(config, str(tmp_path / "resumed"), log=lambda s: None, stop_after=5)
    assert out["step"] == 8
    assert _records(tmp_path / "resumed") == _records(tmp_path / "full")
    for a, b in zip(jax.tree.leaves(full["state"]), jax.tree.leaves(out["state"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    cmd = [
        sys.executable, "-m", "lcm.train", f"--config={TINY}", f"--workdir={tmp_path}",
        "--config.train.num_steps=100000", "--config.train.log_every=1",
        "--config.train.eval_every=0", "--config.train.checkpoint_every=1000",
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=config_lib.REPO_ROOT,
    )  # fmt: skip
    for line in proc.stdout:
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, rest
    saved = int(rest.split("SIGTERM: saved step ")[1].split(",")[0])
    assert saved >= 3
    assert (tmp_path / "checkpoints" / str(saved)).is_dir()


def _one_step(config, devices):
    """Loss and updated params after one step on a mesh over ``devices``."""
    mesh = mesh_lib.make_mesh(config.mesh, devices=devices)
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    model = model_lib.Transformer(model_lib.build_spec(config))
    tx = optimizer.make_optimizer(config.train)
    batch = next(data_lib.make_train_iterator(config))
    b, t = batch["inputs"].shape
    with sharding.use_mesh(mesh, rules):
        _, shardings = state_lib.state_shardings(model, tx, mesh, rules, batch_size=b, seq_len=t)
        state = state_lib.init_state(model, tx, shardings, 0, batch_size=b, seq_len=t)
        batch_sharding = sharding.named_sharding(mesh, ("batch", "length"), rules)
        step = step_lib.jit_train_step(
            step_lib.make_train_step(model, tx, z_loss=1e-4, grad_accum_steps=1),
            shardings,
            batch_sharding,
        )
        state, metrics = step(state, loop.batch_to_device(config, mesh, batch_sharding)(batch))
    return float(metrics["loss"]), float(metrics["grad_norm"]), jax.device_get(state.params)


@pytest.mark.multidevice
@pytest.mark.parametrize(
    "shape, impl",
    [  # data8 is slow: data2fsdp2tensor2 shards the batch over data and fsdp as well
        pytest.param((8, 1, 1, 1), "blockwise", marks=pytest.mark.slow),
        ((2, 2, 1, 2), "blockwise"),
        # @slow: XLA:CPU deadlocks in this step about 1 run in 12 on 2 loaded cores (devices
        # 0-4 wait in a collective-permute, 1 and 3 in all-gathers, none moves for 900 s);
        # ring itself stays in the default suite (conformance, ring_test, the TPU train step).
        pytest.param((2, 1, 4, 1), "ring", marks=pytest.mark.slow),
        pytest.param((2, 1, 4, 1), "all_gather", marks=pytest.mark.slow),
        pytest.param((2, 1, 4, 1), "ulysses", marks=pytest.mark.slow),
        # heads over tensor 2 x Ulysses 2, a ring of 2 groups
        pytest.param((1, 1, 4, 2), "usp", marks=pytest.mark.slow),
    ],
    ids=[
        "data8",
        "data2fsdp2tensor2",
        "data2context4ring",
        "data2context4all_gather",
        "data2context4ulysses",
        "context4tensor2usp",
    ],
)
def test_sharded_step_matches_one_device(devices8, shape, impl):
    config = _tiny()
    config.model.num_heads, config.model.num_kv_heads = 4, 2  # Ulysses splits 4 heads
    config.mesh.shape = (1, 1, 1, 1)
    want_loss, want_norm, want_params = _one_step(config, devices8[:1])
    config.mesh.shape = shape
    config.model.attention.impl = impl
    loss, norm, params = _one_step(config, devices8)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(norm, want_norm, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
