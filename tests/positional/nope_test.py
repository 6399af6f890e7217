"""NoPE and NoPE head scale: identity, and λ_h · q·k/√H (Wang et al.) with its gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm.positional.nope import NoPE, NoPEHeadScale


def _qk(seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((2, 3, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((2, 5, 2, 8)), jnp.float32)
    return q, k


POS_Q, POS_K = jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 5), jnp.int32)


def test_nope_is_identity_and_has_no_logits_hook():
    q, k = _qk()
    out_q, out_k = NoPE().rotate(q, k, POS_Q, POS_K)
    assert out_q is q and out_k is k and NoPE().logits_fn is None


def test_head_scale_declares_its_parameter_with_the_paper_init():
    (param,) = NoPEHeadScale(num_heads=4).params
    assert (param.name, param.shape, param.axes) == ("head_scale", (4,), ("heads",))
    value = param.init(jax.random.key(0), param.shape, param.dtype)
    np.testing.assert_array_equal(value, np.full(4, 1.6, np.float32))  # the paper's init


def _scaled(lam):
    return dataclasses.replace(NoPEHeadScale(num_heads=4), head_scale=lam)


def test_head_scale_multiplies_logits_per_head():
    q, k = _qk(1)
    lam = jnp.asarray([1.0, 1.6, 2.0, 0.5])
    qs, ks = _scaled(lam).rotate(q, k, POS_Q, POS_K)
    assert ks is k

    def logits(qq):  # head n reads kv head n // 2
        kk = jnp.repeat(k, 2, axis=2)
        return jnp.einsum("BTNH,BSNH->BNTS", qq, kk, precision="highest") / jnp.sqrt(8.0)

    # (λq).k and λ(q.k) round differently; near-zero logits lose digits to cancellation, so
    # the bound is relative to the logits' scale (about 1) as well as to each value.
    np.testing.assert_allclose(
        logits(qs), lam[None, :, None, None] * logits(q), rtol=1e-6, atol=1e-6
    )
    # head_dim 64: λ = 1 -> logit multiplier 1/8 = 0.125, λ = 1.6 -> 0.2 (reference §15b).
    assert 1.6 / np.sqrt(64) == pytest.approx(0.2)


def test_head_scale_gradient_is_the_per_head_logit_sum():
    q, k = _qk(2)
    lam = jnp.asarray([1.0, 1.5, 2.0, 3.0])

    def loss(lam):
        qs, _ = _scaled(lam).rotate(q, k, POS_Q, POS_K)
        return jnp.sum(qs * 2.0)

    # d/dλ_h Σ 2·λ_h·q = 2 Σ q over head h.
    np.testing.assert_allclose(jax.grad(loss)(lam), 2 * q.sum(axis=(0, 1, 3)), rtol=1e-5)


def test_head_scale_checks_head_count_and_that_the_model_filled_it():
    q, k = _qk()
    with pytest.raises(ValueError, match="q has 4 heads; this scheme has 3"):
        dataclasses.replace(NoPEHeadScale(num_heads=3), head_scale=jnp.ones(3)).rotate(
            q, k, POS_Q, POS_K
        )
    with pytest.raises(ValueError, match="head_scale is unset"):
        NoPEHeadScale(num_heads=4).rotate(q, k, POS_Q, POS_K)
