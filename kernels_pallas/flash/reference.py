"""Dense oracle for the kernels, in the kernel layout ``q [B,N,T,H]``, ``k, v [B,K,S,H]``.

Materializes all logits in float32 at ``precision=HIGHEST``. Rows with no visible key give zero
output and ``lse = -inf``, and their gradients are zero (never NaN), matching the kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.mask import PositionalMask


def attention_reference(q, k, v, visible, *, scale):
    """Softmax attention over ``visible [B or 1, N or 1, T, S]`` (bool); returns (out, lse).

    ``out [B,N,T,H]`` in q's dtype, ``lse [B,N,T]`` float32. Query head n reads kv head
    ``n // (N // K)``.
    """
    b, n, t, h = q.shape
    kh = k.shape[1]
    qf = q.astype(jnp.float32).reshape(b, kh, n // kh, t, h)
    s = jnp.einsum(
        "BKGTH,BKSH->BKGTS", qf, k.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
    s = (s * scale).reshape(b, n, t, -1)
    visible = jnp.broadcast_to(visible, s.shape)
    m = jax.lax.stop_gradient(jnp.max(jnp.where(visible, s, -jnp.inf), axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    # Masked entries are replaced before exp so that neither value nor gradient overflows.
    e = jnp.where(visible, jnp.exp(jnp.where(visible, s, m) - m), 0.0)
    l = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(l == 0.0, 1.0, l)
    out = jnp.einsum(
        "BKGTS,BKSH->BKGTH",
        p.reshape(b, kh, n // kh, t, -1),
        v.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    lse = jnp.where(l == 0.0, -jnp.inf, m + jnp.log(jnp.where(l == 0.0, 1.0, l)))[..., 0]
    return out.reshape(b, n, t, h).astype(q.dtype), lse


def token_visibility(mask: PositionalMask, q_pos, kv_pos, q_seg=None, kv_seg=None):
    """``[B, 1, T, S]`` bool: the positional mask on positions, ANDed with segment ids."""
    visible = mask.allows(q_pos[:, :, None], kv_pos[:, None, :])
    if q_seg is not None:
        visible = visible & (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
    return visible[:, None]


def mha_reference(
    q,
    k,
    v,
    q_segment_ids=None,
    kv_segment_ids=None,
    q_positions=None,
    kv_positions=None,
    *,
    causal=False,
    scale=None,
    return_lse=False,
):
    """Oracle for ``flash_attention`` with the same arguments and outputs."""
    b, _, t, h = q.shape
    s = k.shape[2]
    q_pos = jnp.broadcast_to(jnp.arange(t), (b, t)) if q_positions is None else q_positions
    kv_pos = jnp.broadcast_to(jnp.arange(s), (b, s)) if kv_positions is None else kv_positions
    visible = token_visibility(
        PositionalMask(causal=causal), q_pos, kv_pos, q_segment_ids, kv_segment_ids
    )
    out, lse = attention_reference(q, k, v, visible, scale=h**-0.5 if scale is None else scale)
    return (out, lse) if return_lse else out
