"""One layer's KV cache and attention over it: the decoding path of ``model.Attention``.

Each attention module's ``cache`` collection is a dict of pre-allocated arrays of capacity C
(``init_layer``; ``lcm.inference.cache`` builds the whole tree)::

    k, v    [B, C, K, H]   keys and values (slots [0, length) hold tokens, oldest first)
    pos     [B, C] int32   each slot's token position (0 when empty)
    seg     [B, C] int32   1 for a held token, 0 for an empty slot (attention's padding id)
    length  [] int32       held tokens (equal across the batch)
    score   [B, K, C] f32  only with an eviction policy: its per-kv-head statistic

New tokens are written at ``length`` and attention runs through ``lcm.attention.attend`` with
T new queries over the C slots (T != S; empty slots are segment 0, so never visible). Keys are
stored after the positional ``rotate`` except for length-dependent RoPE (``dynamic``,
``longrope``), whose frequencies depend on the current length ``max(k_pos) + 1``: there K is
stored un-rotated and the whole cache is rotated again at every step, so a step equals a full
forward pass over the prefix (reference notes, positional §4(d)). Schemes with a logits hook
(ALiBi, TAPA, SelfExtend, LM-Infinite) rotate nothing, so their K is stored as projected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lcm import attention as attention_lib
from lcm.attention import core
from lcm.attention import masks as masks_lib
from lcm.positional.rope_scaling import LENGTH_DEPENDENT
from lcm.positional.scheme import gqa_scores

LAYER_KEYS = ("k", "v", "pos", "seg", "length")


def needs_rerotation(scheme) -> bool:
    """Whether ``scheme``'s key rotation depends on the current length (K stored un-rotated)."""
    rope_type = getattr(scheme, "rope_type", "default")
    return rope_type in LENGTH_DEPENDENT


def init_layer(batch: int, capacity: int, kv_heads: int, head_dim: int, dtype, *, score: bool):
    """An empty layer cache of ``capacity`` slots."""
    layer = {
        "k": jnp.zeros((batch, capacity, kv_heads, head_dim), dtype),
        "v": jnp.zeros((batch, capacity, kv_heads, head_dim), dtype),
        "pos": jnp.zeros((batch, capacity), jnp.int32),
        "seg": jnp.zeros((batch, capacity), jnp.int32),
        "length": jnp.zeros((), jnp.int32),
    }
    if score:
        layer["score"] = jnp.zeros((batch, kv_heads, capacity), jnp.float32)
    return layer


def attention_weights(q, k, *, mask, q_pos, k_pos, q_seg, kv_seg, logits_fn, scale):
    """Float32 softmax weights ``[B, N, T, S]`` (rows that see no key are zeros).

    The same logits and visibility as the ``reference`` implementation, for eviction policies
    that score tokens by the attention they receive.
    """
    if logits_fn is None:
        logits = scale * gqa_scores(q.astype(jnp.float32), k.astype(jnp.float32))
    else:
        with jax.default_matmul_precision("highest"):
            logits = logits_fn(q.astype(jnp.float32), k.astype(jnp.float32), q_pos, k_pos,
                               scale=scale).astype(jnp.float32)  # fmt: skip
    visible = masks_lib.visibility(mask, q_pos, k_pos, q_seg, kv_seg)[:, None]
    logits = jnp.where(visible, logits, -jnp.inf)
    m = logits.max(-1, keepdims=True)
    p = jnp.where(visible, jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    total = p.sum(-1, keepdims=True)
    return p / jnp.where(total > 0, total, 1.0)


def attend_cached(plan, cache, q, k, v, positions, segment_ids):
    """Writes the new ``k, v`` into a layer's ``cache`` and attends ``q`` over the cache.

    Args:
      plan: the layer's ``LayerPlan`` (its positional scheme, mask and implementation).
      cache: the layer cache, ``LAYER_KEYS`` (and ``score`` when a policy keeps one).
      q: ``[B, T, N, H]`` new queries, k, v: ``[B, T, K, H]`` new keys and values, all before
        the positional ``rotate``.
      positions, segment_ids: ``[B, T]`` of the new tokens; segment 0 marks padding at the end
        of a chunk (written, not counted in ``length``, overwritten by the next write).

    Returns:
      ``(out, updated, weights)``: ``[B, T, N, H]`` attention output, the new ``LAYER_KEYS``
      entries, and with a ``score`` entry in ``cache`` the step's float32 attention weights
      ``[B, N, T, C]`` (else None).
    """
    scheme, mask = plan.scheme, plan.mask
    start = cache["length"]
    rerotate = needs_rerotation(scheme)
    if not rerotate:
        q, k = scheme.rotate(q, k, positions, positions)

    def write(buffer, new):
        index = (0, start) + (0,) * (buffer.ndim - 2)
        return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), index)

    k_all, v_all = write(cache["k"], k), write(cache["v"], v)
    pos_all = write(cache["pos"], jnp.where(segment_ids != 0, positions, 0))
    seg_all = write(cache["seg"], segment_ids)
    keys = k_all
    if rerotate:
        q, keys = scheme.rotate(q, k_all, positions, pos_all)
    out = attention_lib.attend(
        q,
        keys,
        v_all,
        mask=mask,
        impl=plan.attention,
        q_pos=positions,
        k_pos=pos_all,
        q_segment_ids=segment_ids,
        kv_segment_ids=seg_all,
        logits_fn=scheme.logits_fn,
    )
    new_length = start + jnp.sum(segment_ids[0] != 0).astype(jnp.int32)
    updated = {"k": k_all, "v": v_all, "pos": pos_all, "seg": seg_all, "length": new_length}
    weights = None
    if "score" in cache:
        weights = attention_weights(
            q,
            keys,
            mask=mask,
            q_pos=positions,
            k_pos=pos_all,
            q_seg=segment_ids,
            kv_seg=seg_all,
            logits_fn=scheme.logits_fn,
            scale=core.default_scale(q.shape[-1]),
        )
    return out, updated, weights
