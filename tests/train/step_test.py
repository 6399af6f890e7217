import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from lcm.train import optimizer
from lcm.train import step as step_lib


def test_cross_entropy_matches_numpy_with_mask_and_z_loss():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, (2, 5))
    mask = (rng.random((2, 5)) > 0.3).astype(np.int32)
    nll, z_term, tokens = step_lib.cross_entropy(logits, targets, mask, z_loss=1e-2)
    m = logits.max(-1, keepdims=True)
    log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    want_nll = ((log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]) * mask).sum()
    np.testing.assert_allclose(nll, want_nll, rtol=1e-6)
    np.testing.assert_allclose(z_term, 1e-2 * (log_z**2 * mask).sum(), rtol=1e-6)
    assert tokens == mask.sum()


def _train_cfg(**kw):
    base = dict(
        learning_rate=1e-2,
        warmup_steps=2,
        num_steps=10,
        min_lr_ratio=0.1,
        adam_b1=0.9,
        adam_b2=0.95,
        weight_decay=0.1,
        grad_clip=1.0,
    )
    return ConfigDict({**base, **kw})


def test_schedule_warmup_then_cosine_to_min():
    sched = optimizer.learning_rate_schedule(_train_cfg())
    np.testing.assert_allclose([sched(0), sched(1), sched(2)], [0.0, 5e-3, 1e-2], rtol=1e-6)
    np.testing.assert_allclose(sched(10), 1e-3, rtol=1e-5)
    # Cosine midpoint between step 2 and 10 sits halfway between peak and end value.
    np.testing.assert_allclose(sched(6), (1e-2 + 1e-3) / 2, rtol=1e-5)


class _Linear:
    """A tiny stand-in 'model' with the Transformer's apply signature (real jax math)."""

    def apply(self, variables, inputs, positions, segment_ids):
        del positions, segment_ids
        return variables["params"]["table"][inputs]


def test_grad_accumulation_equals_one_big_batch():
    model = _Linear()
    tx = optax.sgd(0.1)
    rng = np.random.default_rng(1)
    params = {"table": jnp.asarray(rng.standard_normal((11, 11)), jnp.float32)}
    batch = {
        "inputs": rng.integers(0, 11, (4, 6)).astype(np.int32),
        "targets": rng.integers(0, 11, (4, 6)).astype(np.int32),
        "positions": np.tile(np.arange(6, dtype=np.int32), (4, 1)),
        "segment_ids": np.ones((4, 6), np.int32),
        "loss_mask": (rng.random((4, 6)) > 0.2).astype(np.int32),
    }
    from lcm.train.state import TrainState

    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))
    one = step_lib.make_train_step(model, tx, z_loss=0.0, grad_accum_steps=1)
    two = step_lib.make_train_step(model, tx, z_loss=0.0, grad_accum_steps=2)
    s1, m1 = jax.jit(one)(state, batch)
    s2, m2 = jax.jit(two)(state, batch)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    np.testing.assert_allclose(s1.params["table"], s2.params["table"], rtol=1e-6, atol=1e-7)
    # And the loss is the masked mean token NLL.
    nll, _, tokens = step_lib.cross_entropy(
        params["table"][batch["inputs"]], batch["targets"], batch["loss_mask"]
    )
    np.testing.assert_allclose(m1["loss"], nll / tokens, rtol=1e-6)
    assert int(s1.step) == 1


def test_unigram_entropy_closed_form():
    from lcm.train.loop import unigram_entropy

    batch = {"targets": np.array([[1, 1, 2, 3]]), "loss_mask": np.array([[1, 1, 1, 0]])}
    # p = (2/3, 1/3): H = -(2/3 ln 2/3 + 1/3 ln 1/3)
    want = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    np.testing.assert_allclose(unigram_entropy([batch]), want, rtol=1e-12)
