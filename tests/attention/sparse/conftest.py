"""Shared helpers for sparse attention tests: random inputs and output / gradient comparisons.

Dense oracles that are masked softmax attention are ``attend(..., impl="reference")`` with a
mask; the tolerance table is tests/conftest.py's ``ATTENTION_TOL``.
"""

import jax
import jax.numpy as jnp
import pytest

from tests.conftest import ATTENTION_TOL
from tests.conftest import assert_close as _shared_assert_close  # the fixture below takes the name


def _inputs(b, t, n, kh, h, seed=0):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(kq, (b, t, n, h), jnp.float32)
    k = jax.random.normal(kk, (b, t, kh, h), jnp.float32)
    v = jax.random.normal(kv, (b, t, kh, h), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return q, k, v, pos


def _assert_close(got, want, tol=ATTENTION_TOL[jnp.float32]):
    _shared_assert_close(got, want, tol)


def _assert_grads_match(fast, slow, q, k, v, tol=ATTENTION_TOL[jnp.float32]):
    """Outputs and ``jax.vjp`` gradients w.r.t. q, k, v of two functions agree."""
    # Jitted, each side compiles as one program instead of dispatching op by op.
    out_f, vjp_f = jax.vjp(jax.jit(fast), q, k, v)
    out_s, vjp_s = jax.vjp(jax.jit(slow), q, k, v)
    _assert_close(out_f, out_s, tol)
    ct = jax.random.normal(jax.random.PRNGKey(7), out_s.shape, out_s.dtype)
    for got, want in zip(vjp_f(ct), vjp_s(ct), strict=True):
        _assert_close(got, want, tol)


@pytest.fixture
def inputs():
    return _inputs


@pytest.fixture
def assert_close():
    return _assert_close


@pytest.fixture
def assert_grads_match():
    return _assert_grads_match
