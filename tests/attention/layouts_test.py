"""The ``balanced`` token layout: per-document zigzag for packed rows (lcm.attention.layouts)."""

import jax
import numpy as np
import pytest

from lcm import attention
from lcm.attention import layouts
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding
from tests.conftest import ATTENTION_TOL, assert_close


def _packed_row(rng, length, mean_doc):
    """Segment ids of a row packed with documents of random lengths, then padding."""
    ids, doc = [], 1
    while len(ids) < length - mean_doc // 4:
        ids += [doc] * int(rng.integers(1, 2 * mean_doc))
        doc += 1
    return np.array((ids + [0] * length)[:length])


def _positions(seg):
    """Positions restarting at 0 in each run of equal segment ids."""
    index = np.arange(seg.size)
    starts = np.r_[True, seg[1:] != seg[:-1]]
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def _causal_work(seg, perm, n):
    """Visible causal pairs (same document, key not after query) per shard's queries."""
    t = np.arange(seg.size)
    same = (seg[:, None] == seg[None, :]) & (seg[:, None] != 0) & (t[None, :] <= t[:, None])
    per_token = same.sum(1)
    return per_token[perm].reshape(n, -1).sum(1)


def test_balanced_permutation_is_a_permutation_with_equal_shards():
    rng = np.random.default_rng(0)
    for _ in range(20):
        seg = _packed_row(rng, 256, int(rng.integers(3, 80)))
        perm = layouts.balanced_permutation(seg, 4)
        np.testing.assert_array_equal(np.sort(perm), np.arange(256))
        assert all(np.all(np.diff(s) > 0) for s in perm.reshape(4, -1))  # order kept per shard
    one_doc = np.ones(64, np.int32)  # one document: exactly zigzag
    np.testing.assert_array_equal(
        layouts.balanced_permutation(one_doc, 4), layouts.layout_permutation(64, 4, "zigzag")
    )
    with pytest.raises(ValueError, match="multiple of 8 for the 'balanced' layout over 4"):
        layouts.balanced_permutation(np.ones(60), 4)
    with pytest.raises(ValueError, match="depends on each row's documents"):
        layouts.layout_permutation(64, 4, "balanced")


def test_balanced_layout_balances_packed_rows_where_zigzag_does_not():
    """Causal work per device (max over mean) on packed rows of 4096 tokens over 8 devices."""
    rng = np.random.default_rng(1)
    worst = {"zigzag": 0.0, "balanced": 0.0}
    for mean_doc in (300, 1000, 2500):
        seg = _packed_row(rng, 4096, mean_doc)
        for layout in worst:
            perm = (layouts.balanced_permutation(seg, 8) if layout == "balanced"
                    else layouts.layout_permutation(4096, 8, "zigzag"))  # fmt: skip
            work = _causal_work(seg, perm, 8)
            worst[layout] = max(worst[layout], work.max() / work.mean())
    assert worst["balanced"] < 1.02, worst
    assert worst["zigzag"] > 1.2, worst


@pytest.mark.multidevice
def test_ring_on_a_balanced_batch_matches_reference(devices8):
    """permute_batch's per-row order: ring (and all_gather) results and gradients equal
    reference's on the same permuted arrays."""
    rng = np.random.default_rng(2)
    b, t, n, kh, h = 2, 64, 4, 2, 8
    seg = np.stack([_packed_row(rng, t, 9), _packed_row(rng, t, 20)]).astype(np.int32)
    pos = np.stack([_positions(r) for r in seg]).astype(np.int32)
    batch = layouts.permute_batch({"segment_ids": seg, "positions": pos}, layout="balanced",
                                  num_shards=4)  # fmt: skip
    perm = np.stack([layouts.balanced_permutation(r, 4) for r in seg])
    q = rng.standard_normal((b, t, n, h), dtype=np.float32)
    k, v = (rng.standard_normal((b, t, kh, h), dtype=np.float32) for _ in range(2))
    q, k, v = (np.take_along_axis(x, perm[:, :, None, None], 1) for x in (q, k, v))
    seg, pos = batch["segment_ids"], batch["positions"]

    def loss(impl):
        def f(q, k, v):
            out = attention.attend(q, k, v, mask=attention.Causal(), impl=impl, q_pos=pos,
                                   k_pos=pos, q_segment_ids=seg, kv_segment_ids=seg)  # fmt: skip
            return (out * np.linspace(-1, 1, out.size).reshape(out.shape)).sum()

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    want = loss("reference")(q, k, v)
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, 4, 1), "axis_types": "auto"},
        devices=devices8,
    )
    for name in ("ring", "all_gather"):
        impl = attention.ATTENTION.get(name)(layout="balanced", block_q=8, block_kv=8)
        with sharding.use_mesh(mesh):
            got = loss(impl)(q, k, v)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert_close(g, w, ATTENTION_TOL[np.float32], name)
