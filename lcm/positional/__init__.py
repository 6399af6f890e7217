"""Positional schemes for long-context attention, selected by ``config.model.positional.name``.

Registered names (``POSITIONAL.names()``), each with its module:

==================  ==========================================================================
rope                RoPE, half/interleaved, partial, every ``rope_scaling`` type (``rope``)
nope                no positional encoding (``nope``)
nope_head_scale     NoPE with a learned per-head temperature, linen (``nope``)
alibi               ALiBi per-head linear biases, logits hook (``alibi``)
tapa                token-aware phase attention, logits hook (``tapa``)
self_extend         SelfExtend grouped positions, logits hook over RoPE (``remap``)
lm_infinite         LM-Infinite distance ceiling, logits hook over RoPE + Λ mask (``remap``)
==================  ==========================================================================

``build(config.model.positional, num_heads=N, head_dim=H)`` returns the scheme object;
``lcm.positional.schedule.layer_spec`` says which scheme and mask each layer uses.
"""

from lcm.positional import alibi, nope, remap, rope, tapa
from lcm.positional.scheme import POSITIONAL as POSITIONAL
from lcm.positional.scheme import build as build

__all__ = ["POSITIONAL", "alibi", "build", "nope", "remap", "rope", "tapa"]
