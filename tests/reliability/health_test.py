"""Numerical health: non-finite steps (stop names step and parameter; skip is bit-exact and
counted) and loss-spike records."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lcm.train import health, loop
from lcm.train import step as step_lib
from lcm.train.state import TrainState


class _Probe:
    """A stand-in model (the Transformer's apply signature) with a parameter that can be made to
    get a NaN gradient while the loss stays finite: ``0 * sqrt(broken - 1)`` is 0 in the forward
    pass, and its gradient at ``broken = 1`` is ``0 * inf = NaN``."""

    def apply(self, variables, inputs, positions, segment_ids):
        del positions, segment_ids
        p = variables["params"]
        return p["table"][inputs] + 0.0 * jnp.sqrt(p["broken"] - 1.0).sum()


def _batch(rng, loss_mask=None):
    b, t, v = 2, 5, 7
    return {
        "inputs": rng.integers(0, v, (b, t)).astype(np.int32),
        "targets": rng.integers(0, v, (b, t)).astype(np.int32),
        "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        "segment_ids": np.ones((b, t), np.int32),
        "loss_mask": np.ones((b, t), np.float32) if loss_mask is None else loss_mask,
    }


def _state(tx, broken):
    rng = np.random.default_rng(0)
    params = {
        "broken": jnp.full((3,), broken, jnp.float32),
        "table": jnp.asarray(rng.standard_normal((7, 7)), jnp.float32),
    }
    return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))


def _monitor(policy, names, spike_factor=0.0):
    return health.Health(policy, spike_factor, 0.9, names)


@pytest.mark.parametrize("injection", ["nan_gradient", "nan_in_data"])
def test_nonfinite_step_keeps_state_bit_exact_and_is_reported(injection):
    tx = optax.adam(0.1)
    step = jax.jit(step_lib.make_train_step(_Probe(), tx, z_loss=0.0, grad_accum_steps=1))
    rng = np.random.default_rng(1)
    good = _state(tx, broken=2.0)
    # One healthy step first, so the optimizer state is not trivially zero.
    state, m = step(good, _batch(rng))
    assert bool(m["finite"]) and np.all(m["leaf_finite"])
    if injection == "nan_gradient":
        state = state.replace(params={**state.params, "broken": jnp.ones(3, jnp.float32)})
        batch = _batch(rng)
    else:  # a NaN weight in the data's loss mask poisons the loss and every gradient
        mask = np.ones((2, 5), np.float32)
        mask[1, 3] = np.nan
        batch = _batch(rng, loss_mask=mask)
    before = jax.device_get(state)
    after, m = step(state, batch)
    assert not bool(m["finite"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), before.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.opt_state), before.opt_state)
    assert int(after.step) == int(before.step) + 1

    names = health.param_paths(state.params)
    assert names == ["broken", "table"]
    if injection == "nan_gradient":
        assert np.isfinite(float(m["loss"]))
        assert m["leaf_finite"].tolist() == [False, True]
        bad = "non-finite gradients of broken (loss"
    else:
        assert m["leaf_finite"].tolist() == [False, False]
        bad = "non-finite gradients of broken, table (loss nan)"
    with pytest.raises(health.NonFiniteError, match=rf"non-finite step 7: loss .*{bad[:30]}"):
        _monitor("stop", names).review(7, float(m["loss"]), False, m["leaf_finite"])
    skip = _monitor("skip", names)
    extras, message = skip.review(7, float(m["loss"]), False, m["leaf_finite"])
    assert extras == {"nonfinite": 1.0, "skipped_steps": 1} and skip.skipped == 1
    assert message.startswith("step 7: ") and bad in message


def test_spike_against_bias_corrected_running_mean():
    monitor = _monitor("stop", ["w"], spike_factor=3.0)
    ok = [True]
    # Constant losses: the bias-corrected mean is exactly that constant.
    for step, loss in enumerate([2.0, 2.0, 2.0], start=1):
        assert monitor.review(step, loss, True, ok) == ({}, None)
    extras, message = monitor.review(4, 6.5, True, ok)
    assert extras == {"loss_spike": 1.0, "loss_mean": pytest.approx(2.0, rel=1e-12)}
    assert message == "step 4: loss spike 6.5000 > 3 x running mean 2.0000"
    # 5.9 < 3 x mean: the mean now includes 6.5: (0.9^3*... ) computed in closed form.
    ema = sum(0.1 * 0.9 ** (3 - i) * x for i, x in enumerate([2.0, 2.0, 2.0, 6.5]))
    assert monitor.loss_ema == pytest.approx(ema, rel=1e-12)
    assert monitor.review(5, 5.9, True, ok) == ({}, None)
    saved = monitor.state()
    again = _monitor("stop", ["w"], spike_factor=3.0)
    again.load(json.loads(json.dumps(saved)))
    assert again.state() == saved


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match=r"config.train.nonfinite = 'warn': allowed: stop, skip"):
        health.Health("warn", 0.0, 0.9, [])


def _records(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_loop_huge_learning_rate_skip_and_stop(tiny, saved_state, tmp_path):
    """A learning rate of 1e30 makes step 2's gradients non-finite (step 1 moves weights far)."""
    settings = dict(
        train__num_steps=4, train__warmup_steps=0, train__learning_rate=1e30,
        train__checkpoint_every=1, train__max_checkpoints=10,
    )  # fmt: skip
    out = loop.train(tiny(train__nonfinite="skip", **settings), str(tmp_path / "skip"), log=print)
    records = _records(tmp_path / "skip")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert np.isfinite(records[0]["loss"]) and "nonfinite" not in records[0]
    assert [r.get("nonfinite") for r in records[1:]] == [1.0, 1.0, 1.0]
    assert [r["skipped_steps"] for r in records] == [0, 1, 2, 3]
    assert out["skipped_steps"] == 3
    # Skipped steps leave the parameters and optimizer state of step 1 bit for bit.
    one, four = saved_state(tmp_path / "skip", 1), saved_state(tmp_path / "skip", 4)
    jax.tree.map(np.testing.assert_array_equal, one["params"], four["params"])
    jax.tree.map(np.testing.assert_array_equal, one["opt_state"], four["opt_state"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["state"].params), four["params"])

    with pytest.raises(health.NonFiniteError, match=r"non-finite step 2: loss .* gradients of "):
        loop.train(tiny(train__nonfinite="stop", **settings), str(tmp_path / "stop"), log=print)
    # Nothing past the last finite step was checkpointed or logged.
    assert sorted(p.name for p in (tmp_path / "stop" / "checkpoints").iterdir()) == ["1"]
    assert [r["step"] for r in _records(tmp_path / "stop")] == [1]
