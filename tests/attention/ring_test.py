"""Ring attention vs dense attention on 8 simulated devices: outputs, lse and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lcm.attention import ring
from lcm.parallel import mesh as mesh_lib

SCALE = 0.25


def _visible(q_pos, k_pos, q_seg, k_seg):  # causal document mask on positions, [B,T,S]
    return (
        (k_pos[:, None, :] <= q_pos[:, :, None])
        & (q_seg[:, :, None] == k_seg[:, None, :])
        & (q_seg[:, :, None] > 0)
    )


def _logits(q, k):  # q [B,T,N,H], k [B,S,K,H] -> [B,N,T,S]
    b, t, n, h = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, t, kh, n // kh, h)
    s = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, precision="highest")
    return SCALE * s.reshape(b, n, t, k.shape[1])


def dense_fwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg):
    s = _logits(q, k)
    mask = _visible(q_pos, k_pos, q_seg, k_seg)[:, None]
    s = jnp.where(mask, s, -jnp.inf)
    lse = jax.nn.logsumexp(s, axis=-1)
    p = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isneginf(lse), 0, lse)[..., None]), 0)
    b, t, n, h = q.shape
    kh = k.shape[2]
    out = jnp.einsum(
        "BKGTS,BSKH->BTKGH", p.reshape(b, kh, n // kh, t, -1), v, precision="highest"
    ).reshape(b, t, n, h)
    return out, lse


def dense_bwd_tile(q, k, v, q_pos, k_pos, q_seg, k_seg, lse, delta, dout):
    b, t, n, h = q.shape
    kh = k.shape[2]
    s = _logits(q, k)
    mask = _visible(q_pos, k_pos, q_seg, k_seg)[:, None]
    p = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isneginf(lse), 0, lse)[..., None]), 0)
    pg = p.reshape(b, kh, n // kh, t, -1)
    doutg = dout.reshape(b, t, kh, n // kh, h)
    dv = jnp.einsum("BKGTS,BTKGH->BSKH", pg, doutg, precision="highest")
    dp = jnp.einsum("BTKGH,BSKH->BKGTS", doutg, v, precision="highest").reshape(p.shape)
    ds = p * (dp - delta[..., None])
    dsg = ds.reshape(pg.shape)
    dq = SCALE * jnp.einsum("BKGTS,BSKH->BTKGH", dsg, k, precision="highest").reshape(q.shape)
    qg = q.reshape(b, t, kh, n // kh, h)
    dk = SCALE * jnp.einsum("BKGTS,BTKGH->BSKH", dsg, qg, precision="highest")
    return dq, dk, dv


def _inputs(b=2, t=32, n=4, kh=2, h=8, layout="contiguous", shards=4, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, h), dtype=np.float32)
    k = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    v = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    pos = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    seg = np.ones((b, t), np.int32)
    seg[0, 11:] = 2  # two packed documents in row 0
    pos[0, 11:] -= 11
    seg[1, -5:] = 0  # padding at the end of row 1
    perm = ring.layout_permutation(t, shards, layout)
    return [x[:, perm] for x in (q, k, v, pos, seg)]


def _ring_fn(mesh):
    spec4, spec2 = P("data", "context", None, None), P("data", "context")

    @jax.jit
    def f(q, k, v, pos, seg):
        fn = jax.shard_map(
            functools.partial(
                ring.ring_attention,
                axis_name="context",
                fwd_tile=dense_fwd_tile,
                bwd_tile=dense_bwd_tile,
            ),
            mesh=mesh,
            in_specs=(spec4, spec4, spec4, spec2, spec2, spec2, spec2),
            out_specs=(spec4, P("data", None, "context")),
        )
        return fn(q, k, v, pos, pos, seg, seg)

    return f


@pytest.mark.multidevice
@pytest.mark.parametrize("layout", ring.LAYOUTS)
def test_ring_matches_dense_outputs_and_grads(devices8, layout):
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, 4, 1), "axis_types": "auto"},
        devices=devices8,
    )
    q, k, v, pos, seg = _inputs(layout=layout)
    f = _ring_fn(mesh)

    def dense(q, k, v):
        return dense_fwd_tile(q, k, v, pos, pos, seg, seg)

    (out, lse), vjp = jax.vjp(lambda q, k, v: f(q, k, v, pos, seg), q, k, v)
    (want_out, want_lse), want_vjp = jax.vjp(dense, q, k, v)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[seg == 0] == 0)  # padding rows: zeros, not NaN
    rng = np.random.default_rng(1)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    dlse = np.where(np.isneginf(want_lse), 0, rng.standard_normal(lse.shape)).astype(np.float32)
    for got, want in zip(vjp((dout, dlse)), want_vjp((dout, dlse)), strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.multidevice
def test_ring_hlo_permutes_and_never_all_gathers(devices8):
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, 4, 1), "axis_types": "auto"},
        devices=devices8,
    )
    q, k, v, pos, seg = _inputs()
    f = _ring_fn(mesh)
    grad = jax.jit(jax.grad(lambda q, k, v: f(q, k, v, pos, seg)[0].sum(), argnums=(0, 1, 2)))
    hlo = grad.lower(q, k, v).compile().as_text()
    assert "collective-permute" in hlo
    assert "all-gather" not in hlo


def test_layout_permutations_match_published_examples():
    assert list(ring.layout_permutation(16, 4, "striped")[:8]) == [0, 4, 8, 12, 1, 5, 9, 13]
    assert list(ring.layout_permutation(8, 2, "zigzag")) == [0, 1, 6, 7, 2, 3, 4, 5]
    assert list(ring.layout_permutation(16, 4, "zigzag")) == [
        0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9
    ]  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 8 for the 'zigzag' layout over 4 shards"):
        ring.layout_permutation(12, 4, "zigzag")
    with pytest.raises(ValueError, match="allowed: contiguous, striped, zigzag"):
        ring.layout_permutation(16, 4, "spiral")


@pytest.mark.parametrize(
    "layout, ratio", [("contiguous", 1.749), ("striped", 1.006), ("zigzag", 1.000)]
)
def test_causal_load_balance_per_ring_step(layout, ratio):
    """Sum over ring steps of the busiest device's causal pairs, over the ideal (S=128, n=4)."""
    n, s = 4, 128
    perm = ring.layout_permutation(n * s, n, layout)
    shards = perm.reshape(n, s)
    total = 0
    for step in range(n):
        work = [np.sum(shards[(r - step) % n][None, :] <= shards[r][:, None]) for r in range(n)]
        total += max(work)
    ideal = (n * s) * (n * s + 1) / 2 / n
    assert round(total / ideal, 3) == ratio
