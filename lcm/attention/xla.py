"""``xla``: ``jax.nn.dot_product_attention`` (its XLA path) with a dense boolean mask.

The fast dense baseline. The mask and segment ids are lowered to one dense ``[B, 1, T, S]``
boolean built from positions, so every ``masks.Mask`` is expressible; its memory is O(T * S)
like the logits XLA builds anyway. It cannot run a positional ``logits_fn`` (custom logits) and
does not return the log-sum-exp; its capabilities say so, and ``attend`` refuses such calls.
``jax.nn.dot_product_attention`` averages the values of a row that sees no key (it masks with a
large finite negative), so those rows are zeroed here, which also zeroes their gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcm.attention import core
from lcm.attention import masks as masks_lib


@core.register(
    "xla",
    core.Capabilities(
        custom_logits=False,
        segments=True,
        gqa=True,
        needs_mesh=False,
        differentiable=True,
        returns_lse=False,
        decode=True,
    ),
)
def xla_attention(
    q, k, v, *, mask, q_pos, k_pos, q_segment_ids, kv_segment_ids, logits_fn, scale, return_lse
):
    """Dense XLA attention; arguments as ``core.attend``. Returns ``(out, None)``."""
    del logits_fn, return_lse  # refused by attend() through the capabilities
    visible = masks_lib.visibility(
        mask,
        q_pos,
        k_pos,
        core.segments_or_ones(q_segment_ids, q),
        core.segments_or_ones(kv_segment_ids, k),
    )
    out = jax.nn.dot_product_attention(
        q, k, v, mask=visible[:, None], scale=scale, implementation="xla"
    )
    seen = visible.any(-1)[:, :, None, None]  # [B, T, 1, 1]
    return jnp.where(seen, out, jnp.zeros((), out.dtype)), None
