"""``reference``: dense float32 attention at HIGHEST precision, the oracle for everything else.

Builds the full ``[B, N, T, S]`` logits and the dense visibility matrix, so it is only for tests
and short sequences. Inputs are upcast to float32 and the output is cast back to ``q.dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcm.attention import core
from lcm.attention import masks as masks_lib

_HIGHEST = jax.lax.Precision.HIGHEST


@core.register(
    "reference",
    core.Capabilities(
        custom_logits=True,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=True,
        decode=True,
    ),
)
def reference_attention(
    q, k, v, *, mask, q_pos, k_pos, q_segment_ids, kv_segment_ids, logits_fn, scale, return_lse
):
    """Dense attention; arguments as ``core.attend``. Returns ``(out, lse or None)``."""
    dtype = q.dtype
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    if logits_fn is None:
        logits = jnp.einsum(
            "BTKGH,BSKH->BKGTS", q.reshape(b, t, kh, g, h), k, precision=_HIGHEST
        ).reshape(b, n, t, s)
        logits = scale * logits
    else:
        with jax.default_matmul_precision("highest"):
            logits = logits_fn(q, k, q_pos, k_pos, scale=scale).astype(jnp.float32)
    visible = masks_lib.visibility(
        mask,
        q_pos,
        k_pos,
        core.segments_or_ones(q_segment_ids, q),
        core.segments_or_ones(kv_segment_ids, k),
    )
    logits = jnp.where(visible[:, None], logits, -jnp.inf)
    # Subtracting the row max keeps exp in range; rows that see nothing use 0 so they stay 0.
    m = jax.lax.stop_gradient(logits.max(-1, keepdims=True))
    p = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
    total = p.sum(-1)  # [B, N, T]
    seen = total > 0
    safe_total = jnp.where(seen, total, 1.0)  # no 0/0 in outputs or gradients
    p = p / safe_total[..., None]
    out = jnp.einsum("BKGTS,BSKH->BTKGH", p.reshape(b, kh, g, t, s), v, precision=_HIGHEST).reshape(
        b, t, n, h
    )
    lse = None
    if return_lse:
        lse = jnp.where(seen, m[..., 0] + jnp.log(safe_total), -jnp.inf).transpose(0, 2, 1)
    return out.astype(dtype), lse
