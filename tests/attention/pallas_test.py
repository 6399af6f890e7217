"""``impl="pallas"`` (flash and block-sparse kernels in jax's generic Pallas interpreter on CPU) vs
``reference``, and the static list widths vs brute-force tile counts."""

import dataclasses

import jax
import numpy as np
import pytest

from lcm import attention
from lcm.attention import masks as masks_lib
from lcm.attention import pallas
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding

WINDOW = attention.SlidingWindow(40) & attention.Causal()
# jax's generic Pallas interpreter (the kernels' default off TPU; spelled out here) compiles about
# twice as fast as TPU interpret mode; tests/kernels_pallas also run the kernels in TPU interpret
# mode.
GENERIC = dict(interpret=True)
STREAMING = (attention.SlidingWindow(31) | attention.Sink(4)) & attention.Causal()


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


def _check(got_fn, q, k, v, pos, seg, mask, q_pos=None, q_seg=None):
    """Outputs, lse and gradients of ``got_fn`` vs ``reference``; queries default to all rows."""
    q_pos, q_seg = (pos, seg) if q_pos is None else (q_pos, q_seg)

    def ref(q, k, v):
        return attention.attend(
            q, k, v, mask=mask, impl="reference", q_pos=q_pos, k_pos=pos, q_segment_ids=q_seg,
            kv_segment_ids=seg, return_lse=True,
        )  # fmt: skip

    (out, lse), vjp = jax.vjp(lambda q, k, v: got_fn(q, k, v, pos, seg), q, k, v)
    (want_out, want_lse), want_vjp = jax.vjp(ref, q, k, v)
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
@pytest.mark.parametrize(
    "mask", [attention.Causal(), pytest.param(STREAMING, marks=pytest.mark.slow)]
)
def test_ring_with_pallas_tiles_matches_reference(mask, devices8):
    q, k, v, pos, seg = _inputs(b=2, t=64, n=4, kh=2, h=8)
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, 4, 1), "axis_types": "auto"},
        devices=devices8,
    )
    fn = jax.jit(_fn("ring", mask, inner="pallas"))
    with sharding.use_mesh(mesh):
        _check(fn, q, k, v, pos, seg, mask)


@pytest.mark.slow
@pytest.mark.multidevice
def test_ring_with_pallas_tiles_runs_window_masks_on_block_lists(devices8):
    """Two ring shards of 256 tokens, two kv blocks each: the block-sparse kernel's lists.

    The mesh spans all 8 devices: in TPU interpret mode (jax 0.10.2) the same test on a mesh
    over 2 of the 8 simulated devices hung inside the kernels' host callbacks."""
    q, k, v, pos, seg = _inputs(b=2, t=512, n=2, kh=2, h=8)
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": (2, 1, 2, 2), "axis_types": "auto"},
        devices=devices8,
    )
    fn = jax.jit(_fn("ring", WINDOW, inner="pallas", block_q=64, block_kv=128))
    with sharding.use_mesh(mesh):
        _check(fn, q, k, v, pos, seg, WINDOW)


@pytest.mark.parametrize(
    "mask",
    [
        WINDOW,
        pytest.param(STREAMING, marks=pytest.mark.slow),
        pytest.param(attention.ChunkedCausal(96), marks=pytest.mark.slow),
        pytest.param(attention.SlidingWindow(20, 20), marks=pytest.mark.slow),
    ],
    ids=["window", "sink_window", "chunked", "bidirectional_window"],
)
def test_static_masks_run_the_block_sparse_kernel(mask):
    """T = 360 pads to 384 = three 128-blocks (lists narrower than 3 for window masks); GQA
    with two kv heads, two documents whose positions restart, padding rows."""
    q, k, v, pos, seg = _inputs(t=360, n=4, kh=2, h=8)
    fn = _fn("pallas", mask, block_q=64, block_kv=128, **GENERIC)
    _check(jax.jit(fn), q, k, v, pos, seg, mask)


@pytest.mark.slow
def test_permuted_positions_take_the_full_width_lists():
    """Shuffled positions break the contiguity the static widths assume: still exact."""
    q, k, v, pos, seg = _inputs(t=256, h=8)
    pos = np.random.default_rng(3).permutation(pos.T).T
    _check(jax.jit(_fn("pallas", WINDOW, block_q=32, block_kv=128)), q, k, v, pos, seg, WINDOW)


@pytest.mark.slow  # sparse/kernel_test.py decodes through this adapter in the fast suite
def test_decode_queries_offset_into_a_longer_kv():
    """Chunked prefill / decoding: 8 queries at the last positions of a 256-key row."""
    q, k, v, pos, seg = _inputs(t=256, h=8)
    q, q_pos, q_seg = q[:, -8:], pos[:, -8:], seg[:, -8:]
    q_seg = np.maximum(q_seg, 2)  # the last rows are padding in _inputs; make them real

    def got(q, k, v, pos, seg):
        return attention.attend(
            q, k, v, mask=STREAMING, impl="pallas", q_pos=q_pos, k_pos=pos, q_segment_ids=q_seg,
            kv_segment_ids=seg, return_lse=True, block_q=64, block_kv=128, **GENERIC,
        )  # fmt: skip

    _check(jax.jit(got), q, k, v, pos, seg, STREAMING, q_pos=q_pos, q_seg=q_seg)


@pytest.mark.parametrize(
    "mask",
    [
        WINDOW,
        STREAMING,
        attention.ChunkedCausal(96),
        attention.SlidingWindow(20, 70),
        attention.Causal(),
        # Overlapping alternatives: their sum bounds the union loosely (still safe).
        attention.SlidingWindow(100) | attention.ChunkedCausal(50),
    ],
)
@pytest.mark.parametrize("block_q, block_kv", [(8, 128), (64, 128), (256, 128), (128, 256)])
def test_list_widths_bound_and_are_tight_for_contiguous_positions(mask, block_q, block_kv):
    """Brute force over offsets: the widest row never exceeds the static width (which would
    truncate lists) and reaches it for some offset (a loose bound wastes grid steps)."""
    nq, nk = 16, 12
    widest = [0, 0]
    for q_off in range(0, 3000, 29):
        for k_off in (0, 3, 64, 500):
            q_lo = q_off + block_q * np.arange(nq)[:, None]
            k_lo = k_off + block_kv * np.arange(nk)[None, :]
            kinds = mask.classify(q_lo, q_lo + block_q - 1, k_lo, k_lo + block_kv - 1)
            listed = np.broadcast_to(kinds != masks_lib.EMPTY, (nq, nk))
            widest = [max(widest[0], listed.sum(1).max()), max(widest[1], listed.sum(0).max())]
    widths = pallas.list_widths(mask, nq, nk, block_q, block_kv)
    if isinstance(mask, masks_lib.Or):
        assert widest[0] <= widths[0] and widest[1] <= widths[1]
    else:
        assert tuple(widest) == widths


def test_pallas_refuses_hooks():
    q, k, v, pos, _ = _inputs(t=16)
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


def _lower_for_tpu(fn, *args):
    """HLO of ``fn`` and of its gradient lowered for a TPU target (no TPU needed; see
    tests/kernels_pallas/lowering_test.py): catches kernel code Mosaic cannot express."""
    from jax._src.mesh import AbstractDevice
    from jax.sharding import AbstractMesh

    tpu = AbstractMesh(
        (1,), ("x",), abstract_device=AbstractDevice("TPU v5 lite", num_cores=1, platform="tpu")
    )

    def loss(*a):
        return jax.numpy.sum(fn(*a).astype(jax.numpy.float32))

    with jax.sharding.use_abstract_mesh(tpu):
        fwd = jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
        grad = jax.jit(jax.grad(loss, (0, 1, 2))).trace(*args).lower(lowering_platforms=("tpu",))
    return fwd, grad.as_text()


def _abstract(b, t, s, n, kh, h):
    q = jax.ShapeDtypeStruct((b, t, n, h), jax.numpy.bfloat16)
    kv = jax.ShapeDtypeStruct((b, s, kh, h), jax.numpy.bfloat16)
    return q, kv, kv


def test_mask_lists_and_sparse_slots_lower_for_tpu():
    """The adapter's lists (both ``lax.cond`` branches) with an lcm mask evaluated inside the
    kernel, and MoBA's gathered slots, lower to Mosaic custom calls."""
    from lcm.attention.sparse import moba

    pos = jax.numpy.broadcast_to(jax.numpy.arange(2048, dtype=jax.numpy.int32), (1, 2048))

    def window(q, k, v):
        return attention.attend(
            q, k, v, mask=STREAMING, impl="pallas", q_pos=pos, k_pos=pos, block_q=256,
            block_kv=512, interpret=False,
        )  # fmt: skip

    fwd, grad = _lower_for_tpu(window, *_abstract(1, 2048, 2048, 4, 2, 128))
    assert fwd.count("tpu_custom_call") == 2 and grad.count("tpu_custom_call") == 6

    def moba_fn(q, k, v):
        return moba.moba_attention(
            q, k, v, block_size=512, top_k=2, q_pos=pos, k_pos=pos, kernel="pallas",
            interpret=False,
        )  # fmt: skip

    fwd, grad = _lower_for_tpu(moba_fn, *_abstract(1, 2048, 2048, 4, 2, 128))
    assert fwd.count("tpu_custom_call") == 1 and grad.count("tpu_custom_call") == 3
