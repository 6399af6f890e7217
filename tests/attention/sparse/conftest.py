"""Shared oracles for sparse attention tests: a dense masked softmax and random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_HIGHEST = jax.lax.Precision.HIGHEST


def _dense(q, k, v, visible, scale=None):
    """Softmax attention with an explicit boolean ``visible [B, N, T, S]`` (float32, HIGHEST)."""
    n, kh, h = q.shape[2], k.shape[2], q.shape[3]
    scale = h**-0.5 if scale is None else scale
    k, v = (jnp.repeat(x, n // kh, axis=2) for x in (k, v))
    s = jnp.einsum("btnh,bsnh->bnts", q, k, precision=_HIGHEST) * scale
    s = jnp.where(visible, s, -jnp.inf)
    m = jax.lax.stop_gradient(s.max(-1, keepdims=True))
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    p = p / jnp.maximum(p.sum(-1, keepdims=True), 1e-30)
    return jnp.einsum("bnts,bsnh->btnh", p, v, precision=_HIGHEST)


def _inputs(b, t, n, kh, h, seed=0):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(kq, (b, t, n, h), jnp.float32)
    k = jax.random.normal(kk, (b, t, kh, h), jnp.float32)
    v = jax.random.normal(kv, (b, t, kh, h), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return q, k, v, pos


def _assert_close(got, want, tol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert np.isfinite(got).all()
    bound = tol * max(np.abs(want).max(), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)


def _assert_grads_match(fast, slow, q, k, v, tol=1e-5):
    """Outputs and ``jax.vjp`` gradients w.r.t. q, k, v of two functions agree."""
    # Jitted, each side compiles as one program instead of dispatching op by op.
    out_f, vjp_f = jax.vjp(jax.jit(fast), q, k, v)
    out_s, vjp_s = jax.vjp(jax.jit(slow), q, k, v)
    _assert_close(out_f, out_s, tol)
    ct = jax.random.normal(jax.random.PRNGKey(7), out_s.shape, out_s.dtype)
    for got, want in zip(vjp_f(ct), vjp_s(ct), strict=True):
        _assert_close(got, want, tol)


@pytest.fixture
def dense():
    return _dense


@pytest.fixture
def inputs():
    return _inputs


@pytest.fixture
def assert_close():
    return _assert_close


@pytest.fixture
def assert_grads_match():
    return _assert_grads_match
