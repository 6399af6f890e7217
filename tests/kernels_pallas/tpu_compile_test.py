"""Every kernel compiles for a TPU (v5e) from any host, with the default ``interpret=None``.

libtpu's compile-only TPU client (``lcm.compile.topology``) runs the whole pipeline that a TPU
host runs (Pallas -> Mosaic lowering, Mosaic's compiler passes, XLA's TPU backend) on CPU, so
TPU-illegal block shapes, dtypes or ops fail here. Nothing is executed. The default
``interpret=None`` must give compiled Mosaic calls (``tpu_custom_call``) for a TPU program even
though the host's default backend is CPU: no interpret-mode host callbacks. The cases cover each
feature once (dtype, head dim, GQA / MHA, segment ids, masks, lse) rather than their product.
Also: the kernels' cost estimates, as XLA reads them back from the compiled program.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import engine
from kernels_pallas.block_sparse import (
    block_lists_from_mask,
    block_sparse_attention,
    block_sparse_attention_bwd,
)
from kernels_pallas.flash import BlockSizes, flash_attention, flash_attention_bwd
from kernels_pallas.flash.kernel import estimated_tiles
from kernels_pallas.mask import PositionalMask
from lcm.compile import topology

TOPOLOGY = "v5e:2x2"
MOSAIC = 'custom_call_target="tpu_custom_call"'


@functools.cache
def _sharding():
    return jax.sharding.SingleDeviceSharding(topology.devices(TOPOLOGY)[0])


def _compile(fn, *args):
    """``fn`` compiled (not run) for one v5e chip."""
    sh = _sharding()
    return jax.jit(fn, in_shardings=sh, out_shardings=sh).lower(*args).compile()


def _assert_mosaic_only(compiled, calls):
    """``calls`` Mosaic kernels and no host callbacks (interpret mode) in the compiled HLO."""
    text = compiled.as_text()
    assert text.count(MOSAIC) == calls
    assert "callback" not in text.lower()
    assert not re.search(r"\b(send|recv)(-done)?\(", text), "host send / recv in the program"
    assert "is_host_transfer=true" not in text


def _qkv(b, n, kh, t, s, h, dtype):
    return (
        jax.ShapeDtypeStruct((b, n, t, h), dtype),
        jax.ShapeDtypeStruct((b, kh, s, h), dtype),
        jax.ShapeDtypeStruct((b, kh, s, h), dtype),
    )


def _loss(fn, return_lse):
    """A scalar through every output of ``fn(q, k, v, *rest)``, so the gradient needs them all."""

    def loss(q, k, v, *rest):
        res = fn(q, k, v, *rest)
        out, lse = res if return_lse else (res, None)
        total = jnp.sum(out.astype(jnp.float32) ** 2)
        if lse is not None:
            total = total + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))
        return total

    return loss


def _check_fwd_and_grad(fn, args, return_lse):
    _assert_mosaic_only(_compile(fn, *args), 1)
    grad = jax.grad(_loss(fn, return_lse), argnums=(0, 1, 2))
    _assert_mosaic_only(_compile(grad, *args), 3)  # forward, dq, dkv


# (dtype, head dim, N, K, causal, segment ids, return_lse): each feature appears at least once.
FLASH_CASES = [
    (jnp.float32, 128, 2, 2, True, False, True),
    (jnp.bfloat16, 64, 8, 2, False, True, False),
    (jnp.bfloat16, 128, 8, 2, True, True, True),
    (jnp.float32, 64, 4, 4, False, False, False),
]


@pytest.mark.parametrize("dtype,h,n,kh,causal,seg,lse", FLASH_CASES)
def test_flash_compiles_for_tpu(dtype, h, n, kh, causal, seg, lse):
    b, t = 2, 1024  # default blocks (512): two q and kv blocks, so tiles are skipped too
    fn = functools.partial(flash_attention, causal=causal, return_lse=lse)
    args = _qkv(b, n, kh, t, t, h, dtype)
    if seg:
        args += (jax.ShapeDtypeStruct((b, t), jnp.int32),) * 2
    _check_fwd_and_grad(fn, args, lse)


def test_flash_bwd_alone_compiles_for_tpu():
    b, n, kh, t, h = 1, 4, 2, 1024, 128
    q, k, v = _qkv(b, n, kh, t, t, h, jnp.bfloat16)
    lse = jax.ShapeDtypeStruct((b, n, t), jnp.float32)
    pos = jax.ShapeDtypeStruct((b, t), jnp.int32)
    fn = functools.partial(flash_attention_bwd, causal=True, block_sizes=BlockSizes(256, 512))
    compiled = _compile(
        lambda q, k, v, o, lse, do, pos, dlse: fn(q, k, v, o, lse, do, None, None, pos, pos,
                                                  d_lse=dlse),
        q, k, v, q, lse, q, pos, lse,
    )  # fmt: skip
    _assert_mosaic_only(compiled, 2)  # dq, dkv


# (mask, dtype, head dim, N, K, segment ids, return_lse)
SPARSE_CASES = [
    (PositionalMask(causal=True, window_left=300), jnp.float32, 128, 8, 2, True, False),
    (PositionalMask(causal=True, chunk=512), jnp.bfloat16, 64, 2, 2, False, True),
    (PositionalMask(causal=True, window_left=200, sink=64), jnp.bfloat16, 128, 8, 2, True, True),
]


@pytest.mark.parametrize(
    "mask,dtype,h,n,kh,seg,lse", SPARSE_CASES, ids=["window", "chunked", "sink"]
)
def test_block_sparse_compiles_for_tpu(mask, dtype, h, n, kh, seg, lse):
    b, t, block = 2, 1024, 256
    lists = block_lists_from_mask(mask, t, t, block, block)
    assert (np.asarray(lists.kv_counts) < t // block).any()  # tiles really are skipped

    def fn(q, k, v, *segs):
        return block_sparse_attention(q, k, v, lists, *segs, mask=mask, return_lse=lse)

    args = _qkv(b, n, kh, t, t, h, dtype)
    if seg:
        args += (jax.ShapeDtypeStruct((b, t), jnp.int32),) * 2
    _check_fwd_and_grad(fn, args, lse)


def test_block_sparse_bwd_alone_compiles_for_tpu():
    b, n, kh, t, h = 1, 4, 1, 1024, 64
    mask = PositionalMask(causal=True, window_left=255)
    lists = block_lists_from_mask(mask, t, t, 256, 256)
    q, k, v = _qkv(b, n, kh, t, t, h, jnp.float32)
    lse = jax.ShapeDtypeStruct((b, n, t), jnp.float32)

    def fn(q, k, v, o, lse, do):
        return block_sparse_attention_bwd(q, k, v, o, lse, do, lists, mask=mask)

    _assert_mosaic_only(_compile(fn, q, k, v, q, lse, q), 2)


def test_tpu_illegal_block_is_refused_before_lowering():
    # A kv block of 64 is fine for our validation only when it spans S; here it does, but the
    # q block of 12 is not a multiple of 8 and not the whole T: our check names it first.
    fn = functools.partial(flash_attention, block_sizes=BlockSizes(12, 64))
    with pytest.raises(ValueError, match="block_q = 12: must be a multiple of 8"):
        _compile(fn, *_qkv(1, 1, 1, 48, 64, 64, jnp.float32))


# --- cost estimates ---------------------------------------------------------------------------


def test_cost_estimate_formula():
    bq, bk, h = 256, 512, 64
    for kernel, matmuls in (("fwd", 2), ("dq", 3), ("dkv", 4)):
        cost = engine.cost_estimate(kernel, 7, bq, bk, h, 1234)
        assert cost.flops == 7 * matmuls * 2 * bq * bk * h
        assert cost.transcendentals == 7 * bq * bk
        assert cost.bytes_accessed == 1234
    # Causal, T = S = 4 blocks: the 10 tiles on and below the diagonal; bidirectional: all 16.
    assert estimated_tiles(PositionalMask(causal=True), 2048, 2048, 512, 512) == 10
    assert estimated_tiles(PositionalMask(), 2048, 2048, 512, 512) == 16
    # Decoding (queries are the last T positions): the last q block sees every kv block.
    assert estimated_tiles(PositionalMask(causal=True), 512, 2048, 512, 512, 1536) == 4
    assert estimated_tiles(PositionalMask(causal=True), 512, 2048, 512, 512) == 1


def _flops(compiled):
    return compiled.cost_analysis()["flops"]


@pytest.mark.parametrize("causal", [True, False])
def test_flash_cost_estimate_reaches_xla(causal):
    b, n, t, h, block = 1, 2, 2048, 128, 512
    tiles = b * n * (10 if causal else 16)
    args = _qkv(b, n, n, t, t, h, jnp.bfloat16)
    fn = functools.partial(flash_attention, causal=causal, return_lse=True)
    fwd = _flops(_compile(fn, *args))
    assert fwd == pytest.approx(tiles * 4 * block * block * h, rel=0.03)
    # The gradient: forward + dq (3 matmuls per tile) + dkv (4), i.e. 9 matmuls per tile.
    grad = _flops(_compile(jax.grad(_loss(fn, True), argnums=(0, 1, 2)), *args))
    assert grad == pytest.approx(tiles * 9 * 2 * block * block * h, rel=0.03)


def test_block_sparse_cost_estimate_counts_scheduled_steps():
    b, n, t, h, block = 1, 2, 2048, 128, 256
    mask = PositionalMask(causal=True, window_left=511)
    lists = block_lists_from_mask(mask, t, t, block, block)
    steps = b * n * (t // block) * lists.kv_ids.shape[-1]  # grid size of the forward
    args = _qkv(b, n, n, t, t, h, jnp.bfloat16)
    fwd = _flops(_compile(lambda q, k, v: block_sparse_attention(q, k, v, lists, mask=mask), *args))
    assert fwd == pytest.approx(steps * 4 * block * block * h, rel=0.03)
