"""``impl="pallas"`` (the flash kernel in TPU interpret mode on CPU) vs ``reference``."""

import dataclasses

import jax
import numpy as np
import pytest

from lcm import attention
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding


def _inputs(b=1, t=200, n=2, kh=1, h=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, h), dtype=np.float32)
    k = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    v = rng.standard_normal((b, t, kh, h), dtype=np.float32)
    pos = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    seg = np.ones((b, t), np.int32)
    seg[:, 70:] = 2  # two packed documents
    pos[:, 70:] -= 70
    seg[:, -9:] = 0  # padding
    return q, k, v, pos, seg


def _fn(impl, mask, **options):
    def f(q, k, v, pos, seg):
        return attention.attend(
            q, k, v, mask=mask, impl=impl, q_pos=pos, k_pos=pos, q_segment_ids=seg,
            kv_segment_ids=seg, return_lse=True, **options,
        )  # fmt: skip

    return f


def _check(got_fn, q, k, v, pos, seg, mask):
    (out, lse), vjp = jax.vjp(lambda q, k, v: got_fn(q, k, v, pos, seg), q, k, v)
    ref = _fn("reference", mask)
    (want_out, want_lse), want_vjp = jax.vjp(lambda q, k, v: ref(q, k, v, pos, seg), q, k, v)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(1)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    dlse = np.where(np.isneginf(want_lse), 0, rng.standard_normal(lse.shape)).astype(np.float32)
    for got, want in zip(vjp((dout, dlse)), want_vjp((dout, dlse)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("mask", [attention.Causal(), attention.Full()], ids=["causal", "full"])
def test_pallas_matches_reference_with_padding_to_blocks(mask):
    """T = 200 pads to two 128-blocks; GQA, two documents and padding rows."""
    q, k, v, pos, seg = _inputs()
    _check(jax.jit(_fn("pallas", mask, block_q=128, block_kv=128)), q, k, v, pos, seg, mask)


@pytest.mark.multidevice
def test_ring_with_pallas_tiles_matches_reference(devices8):
    q, k, v, pos, seg = _inputs(b=2, t=64, n=4, kh=2, h=8)
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, 4, 1), "axis_types": "auto"},
        devices=devices8,
    )
    fn = jax.jit(_fn("ring", attention.Causal(), inner="pallas"))
    with sharding.use_mesh(mesh):
        _check(fn, q, k, v, pos, seg, attention.Causal())


def test_pallas_refuses_masks_and_hooks_it_cannot_run():
    q, k, v, pos, seg = _inputs(t=16)
    with pytest.raises(ValueError, match=r"impl 'pallas' supports masks Causal\(\), Full\(\)"):
        _fn("pallas", attention.SlidingWindow(4))(q, k, v, pos, seg)
    with pytest.raises(ValueError, match="cannot serve this attend"):
        attention.attend(
            q, k, v, mask=attention.Causal(), impl="pallas", q_pos=pos, k_pos=pos,
            logits_fn=_Hook(),
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Hook:
    """A hashable logits hook; the capability check refuses it before it could run."""

    def __call__(self, q, k, q_pos, k_pos, *, scale):
        raise AssertionError("never called")
