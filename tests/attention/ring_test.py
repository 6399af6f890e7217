"""Ring attention vs the reference on 8 simulated devices: outputs, lse and gradients."""

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcm import attention
from lcm.attention import layouts
from lcm.compile import hlo
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding


def _mesh(devices, axis_types="auto", shape=(2, 1, 4, 1)):
    return mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": shape, "axis_types": axis_types}, devices=devices
    )


def _inputs(b=4, t=64, n=4, kh=2, h=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, h), dtype=np.float32)
    k = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    v = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    pos = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    seg = np.ones((b, t), np.int32)
    seg[0, 21:] = 2  # two packed documents in row 0
    pos[0, 21:] -= 21
    seg[1, -5:] = 0  # padding at the end of row 1
    return q, k, v, pos, seg


def _attend(impl, mask, logits_fn=None, **options):
    def f(q, k, v, pos, seg):
        return attention.attend(
            q, k, v, mask=mask, impl=impl, q_pos=pos, k_pos=pos, q_segment_ids=seg,
            kv_segment_ids=seg, logits_fn=logits_fn, return_lse=True, **options,
        )  # fmt: skip

    return f


@dataclasses.dataclass(frozen=True)
class _SoftCap:
    """A hashable logits hook (tanh soft cap over scaled dot products) to exercise logits_fn."""

    cap: float = 2.0

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        del q_pos, k_pos
        b, t, n, h = q.shape
        kh = k.shape[2]
        s = jnp.einsum("BTKGH,BSKH->BKGTS", q.reshape(b, t, kh, n // kh, h), k,
                       precision="highest", preferred_element_type=jnp.float32)  # fmt: skip
        return self.cap * jnp.tanh(scale * s.reshape(b, n, t, -1) / self.cap)


@pytest.mark.multidevice
@pytest.mark.parametrize(
    "layout, mask, logits_fn, shape, axis_types, block, pass_mesh",
    [
        ("contiguous", attention.Causal(), None, (2, 1, 4, 1), "auto", 8, False),
        ("striped", attention.Causal(), None, (1, 1, 8, 1), "auto", 8, False),
        ("zigzag", attention.Causal(), _SoftCap(), (2, 2, 2, 1), "auto", 5, False),
        (
            "zigzag",
            attention.SlidingWindow(9) | attention.Sink(3),
            None,
            (2, 1, 4, 1),
            "explicit",
            8,
            True,
        ),
        ("contiguous", attention.Full(), None, (2, 1, 4, 1), "explicit", 8, False),
        ("striped", attention.SlidingWindow(9), None, (1, 1, 8, 1), "explicit", 3, True),
        # A given layout lets the ring stop after the hops the mask can reach (ring_hops):
        # 3 of 8 shards of 8 for a window of 9, 2 of 4 shards of 16 for chunks of 12.
        ("contiguous", attention.SlidingWindow(9), None, (1, 1, 8, 1), "auto", 4, True),
        ("contiguous", attention.ChunkedCausal(12), _SoftCap(), (2, 1, 4, 1), "auto", 8, True),
    ],
)
def test_ring_matches_reference_outputs_and_grads(
    devices8, layout, mask, logits_fn, shape, axis_types, block, pass_mesh
):
    """Global arrays in the layout's order (``layouts.permute``) vs the reference on them."""
    mesh = _mesh(devices8, axis_types, shape)
    q, k, v, pos, seg = (layouts.permute(x, layout, shape[2]) for x in _inputs())
    options = {"mesh": mesh, "layout": layout} if pass_mesh else {}
    ring_fn = jax.jit(_attend("ring", mask, logits_fn, block_q=block, block_kv=block, **options))
    ref_fn = _attend("reference", mask, logits_fn)
    with contextlib.nullcontext() if pass_mesh else sharding.use_mesh(mesh):
        (out, lse), vjp = jax.vjp(lambda q, k, v: ring_fn(q, k, v, pos, seg), q, k, v)
        rng = np.random.default_rng(1)
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        dlse = np.where(np.isneginf(lse), 0, rng.standard_normal(lse.shape)).astype(np.float32)
        grads = vjp((dout, dlse))
    (want_out, want_lse), want_vjp = jax.vjp(lambda q, k, v: ref_fn(q, k, v, pos, seg), q, k, v)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[seg == 0] == 0)  # padding rows: zeros, not NaN
    for got, want in zip(grads, want_vjp((dout, dlse)), strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_permute_and_unpermute_are_inverse():
    x = np.arange(2 * 32).reshape(2, 32)
    for layout in layouts.FIXED:
        y = layouts.permute(x, layout, 4)
        np.testing.assert_array_equal(layouts.unpermute(y, layout, 4), x)
        np.testing.assert_array_equal(layouts.unpermute(jnp.asarray(y), layout, 4), x)
    np.testing.assert_array_equal(layouts.permute(x, "striped", 4)[0, :4], [0, 4, 8, 12])


@pytest.mark.multidevice
def test_ring_hlo_permutes_and_never_all_gathers(devices8):
    q, k, v, pos, seg = _inputs()
    f = _attend("ring", attention.Causal(), block_q=8, block_kv=8)
    loss = jax.jit(jax.grad(lambda q, k, v: f(q, k, v, pos, seg)[0].sum(), argnums=(0, 1, 2)))
    with sharding.use_mesh(_mesh(devices8)):
        hlo = loss.lower(q, k, v).compile().as_text()
    assert "collective-permute" in hlo
    assert "all-gather" not in hlo


@pytest.mark.multidevice
def test_ring_backward_compiles_with_full_xla_optimizations(devices8):
    """Regression: 8 query tiles per device once crashed XLA:CPU's optimizing compiler (LLVM
    "Cannot select ... and_not_fusion" on the bool tile lists); the suite compiles with most
    optimizations off, so this case turns them back on and checks the gradient too."""
    q, k, v, pos, _ = _inputs(b=2, t=128, n=2, kh=1, h=8)
    q, k, v, pos = q[:1], k[:1], v[:1], pos[1:]  # one row, one document: the failing shape
    seg = np.ones_like(pos)
    f = _attend("ring", attention.Causal(), block_q=8, block_kv=8)
    ref = _attend("reference", attention.Causal())
    grad = jax.jit(jax.grad(lambda q, k, v: f(q, k, v, pos, seg)[0].sum(), argnums=(0, 1, 2)))
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        with sharding.use_mesh(_mesh(devices8[:2], shape=(1, 1, 2, 1))):
            got = grad(q, k, v)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    want = jax.grad(lambda q, k, v: ref(q, k, v, pos, seg)[0].sum(), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_ring_needs_a_mesh_with_its_axis():
    q, k, v, pos, seg = _inputs()
    with pytest.raises(ValueError, match="impl 'ring' needs a mesh with axis 'context'"):
        _attend("ring", attention.Causal())(q, k, v, pos, seg)


def test_ring_hops_stop_where_the_mask_stops():
    """Hops that can bring a visible key, for 4 shards of 128 tokens: a window of W needs
    ceil(W / 128) + 1 in the contiguous layout; zigzag's second chunks sit on the far side of
    the ring and striped spreads neighbours over every shard, so both need the whole ring."""
    backs = (0, 1, 127, 128, 129, 384, 511, 512, float("inf"))
    hops = {lay: [layouts.ring_hops((b, 0), lay, 4, 512) for b in backs] for lay in layouts.FIXED}
    assert hops == {
        "contiguous": [1, 2, 2, 2, 3, 4, 4, 4, 4],
        "striped": [1, 2, 4, 4, 4, 4, 4, 4, 4],
        "zigzag": [1, 4, 4, 4, 4, 4, 4, 4, 4],
    }
    assert layouts.ring_hops((3, 1), "contiguous", 4, 512) == 4  # keys ahead: the whole ring
    assert layouts.ring_hops((3, 0), "balanced", 4, 512) == 4  # an order per row: the whole ring
    reach = (
        (attention.SlidingWindow(100) | attention.ChunkedCausal(8)) & attention.Causal()
    ).reach()
    assert reach == (100, 0)
    assert (attention.SlidingWindow(4) | attention.Sink(2)).reach() == (float("inf"),) * 2


@pytest.mark.slow  # the TPU train step (aot_test ring_window) asserts it in the default suite
@pytest.mark.multidevice
def test_window_ring_permutes_only_the_hops_it_needs(devices8):
    """Executed collective-permutes of forward + backward on 8 devices: the full ring sends
    K, V, positions, segment ids 7 times forward and 7 times backward, dK/dV 7 times and once
    home (72); a window of 9 over shards of 8 stops after 3 hops (22)."""
    q, k, v, pos, seg = _inputs()
    mesh = _mesh(devices8, shape=(1, 1, 8, 1))
    counts = {}
    for name, mask in (("causal", attention.Causal()), ("window", attention.SlidingWindow(9))):
        f = _attend("ring", mask, block_q=8, block_kv=8, mesh=mesh, layout="contiguous")
        grad = jax.jit(
            jax.grad(lambda q, k, v, f=f: f(q, k, v, pos, seg)[0].sum(), argnums=(0, 1, 2))
        )
        text = grad.lower(q, k, v).compile().as_text()
        counts[name] = hlo.summarize(text).collectives["collective-permute"].executed
    assert counts == {"causal": 4 * 7 + 4 * 7 + 2 * 7 + 2, "window": 4 * 2 + 4 * 2 + 2 * 2 + 2}


def test_layout_permutations_match_published_examples():
    assert list(layouts.layout_permutation(16, 4, "striped")[:8]) == [0, 4, 8, 12, 1, 5, 9, 13]
    assert list(layouts.layout_permutation(8, 2, "zigzag")) == [0, 1, 6, 7, 2, 3, 4, 5]
    assert list(layouts.layout_permutation(16, 4, "zigzag")) == [
        0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9
    ]  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 8 for the 'zigzag' layout over 4 shards"):
        layouts.layout_permutation(12, 4, "zigzag")
    with pytest.raises(ValueError, match="allowed: contiguous, striped, zigzag"):
        layouts.layout_permutation(16, 4, "spiral")


@pytest.mark.parametrize(
    "n, layout, ratio",
    [
        (4, "contiguous", 1.749),
        (4, "striped", 1.006),
        (4, "zigzag", 1.000),
        (8, "contiguous", 1.874),
        (8, "striped", 1.007),
        (8, "zigzag", 1.000),
    ],
)
def test_causal_load_balance_per_ring_step(n, layout, ratio):
    """Sum over ring steps of the busiest device's causal pairs, over the ideal (S=128)."""
    s = 128
    perm = layouts.layout_permutation(n * s, n, layout)
    shards = perm.reshape(n, s)
    total = 0
    for step in range(n):
        work = [np.sum(shards[(r - step) % n][None, :] <= shards[r][:, None]) for r in range(n)]
        total += max(work)
    ideal = (n * s) * (n * s + 1) / 2 / n
    assert round(total / ideal, 3) == ratio
