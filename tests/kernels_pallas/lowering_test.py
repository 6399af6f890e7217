"""The compiled (Mosaic) path lowers for a TPU target on any machine.

``jit(...).trace(...).lower(lowering_platforms=("tpu",))`` runs the Pallas -> Mosaic lowering
without a TPU: it rejects TPU-illegal block shapes and kernel ops Mosaic cannot express. It does
not run Mosaic's own compiler passes (those need libtpu), so it is a necessary check, not a
sufficient one.
"""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax._src.mesh import AbstractDevice
from jax.sharding import AbstractMesh

from kernels_pallas.block_sparse import block_lists_from_mask, block_sparse_attention
from kernels_pallas.flash import BlockSizes, flash_attention
from kernels_pallas.mask import PositionalMask

# Lowering consults the target chip (e.g. for integer division); name one, as no TPU is attached.
_TPU_V5E = AbstractMesh(
    (1,),
    ("x",),
    abstract_device=AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu"),
)


def _lower_fwd_bwd(fn, *args):
    """Lowers the forward and the gradient of ``fn`` for TPU; returns the two HLO texts."""

    def loss(q, k, v):
        out, lse = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32)) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0))

    with jax.sharding.use_abstract_mesh(_TPU_V5E):
        fwd = jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
        bwd = jax.jit(jax.grad(loss, (0, 1, 2))).trace(*args).lower(lowering_platforms=("tpu",))
    return fwd, bwd.as_text()


def _qkv(b, n, kh, t, s, h, dtype=jnp.bfloat16):
    return (
        jax.ShapeDtypeStruct((b, n, t, h), dtype),
        jax.ShapeDtypeStruct((b, kh, s, h), dtype),
        jax.ShapeDtypeStruct((b, kh, s, h), dtype),
    )


@pytest.mark.parametrize("causal", [False, True])
def test_flash_lowers_for_tpu_with_default_blocks(causal):
    b, t = 2, 2048
    seg = jnp.ones((b, t), jnp.int32)
    fn = functools.partial(flash_attention, causal=causal, return_lse=True, interpret=False)
    fwd, bwd = _lower_fwd_bwd(lambda q, k, v: fn(q, k, v, seg, seg), *_qkv(b, 8, 2, t, t, 128))
    # One Mosaic custom call forward; forward + dq + dkv in the gradient.
    assert fwd.count("tpu_custom_call") == 1
    assert bwd.count("tpu_custom_call") == 3


def test_block_sparse_lowers_for_tpu():
    t = 4096
    mask = PositionalMask(causal=True, window_left=1023, chunk=2048, sink=128)
    lists = block_lists_from_mask(mask, t, t, 512, 512)
    fn = functools.partial(block_sparse_attention, mask=mask, return_lse=True, interpret=False)
    fwd, bwd = _lower_fwd_bwd(lambda q, k, v: fn(q, k, v, lists), *_qkv(1, 4, 4, t, t, 64))
    assert fwd.count("tpu_custom_call") == 1
    assert bwd.count("tpu_custom_call") == 3


def test_tpu_illegal_block_is_caught_by_lowering():
    # A kv block of 64 is fine for our validation only when it spans S; here it does, but the
    # q block of 12 is not a multiple of 8 and not the whole T: our check names it first.
    with pytest.raises(ValueError, match="block_q = 12: must be a multiple of 8"):
        jax.jit(functools.partial(flash_attention, block_sizes=BlockSizes(12, 64))).trace(
            *_qkv(1, 1, 1, 48, 64, 64)
        ).lower(lowering_platforms=("tpu",))
