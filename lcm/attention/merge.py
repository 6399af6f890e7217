"""Exact merge of attention results over disjoint key sets, by their log-sum-exps.

If ``(o_i, lse_i)`` is softmax attention of the same queries over disjoint key sets ``K_i``, then
attention over their union is ``o = sum_i exp(lse_i - lse) o_i`` with ``lse = logsumexp_i
lse_i`` (the online-softmax identity of Milakov & Gimelshein 2018, arXiv 1805.02867, used by
FlashAttention and Ring Attention). Ring steps, sparse attention branches and SelfExtend's
neighbour/grouped parts all combine partial results with this.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def merge_attention(
    outs: Sequence[jax.Array], lses: Sequence[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Merges partial attention results.

    Args:
      outs: partial outputs, each ``[B, T, N, H]`` (any float dtype).
      lses: their log-sum-exps, each ``[B, T, N]`` (``-inf`` where a part saw no key).

    Returns:
      ``(out [B, T, N, H] in outs[0].dtype, lse [B, T, N] float32)``; rows that no part saw
      are zeros with ``lse = -inf``, without NaN in values or gradients.
    """
    if not outs or len(outs) != len(lses):
        raise ValueError(f"need matching non-empty outs and lses; got {len(outs)} and {len(lses)}")
    lse = jnp.stack([x.astype(jnp.float32) for x in lses])  # [P, B, T, N]
    m = jax.lax.stop_gradient(lse.max(0))
    w = jnp.exp(lse - jnp.where(jnp.isfinite(m), m, 0.0))  # exp(-inf) = 0 for empty parts
    total = w.sum(0)
    seen = total > 0
    safe_total = jnp.where(seen, total, 1.0)
    out = (
        sum(wi[..., None] * oi.astype(jnp.float32) for wi, oi in zip(w, outs, strict=True))
        / safe_total[..., None]
    )
    merged_lse = jnp.where(seen, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(safe_total), -jnp.inf)
    return out.astype(outs[0].dtype), merged_lse
