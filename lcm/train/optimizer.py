"""Optimizer from ``config.train``: AdamW (Loshchilov & Hutter 2019) with linear warmup, cosine
decay to ``min_lr_ratio`` of the peak, and global-norm clipping.

Weight decay applies to matrices only (``ndim >= 2``): norm scales are left alone, as in most LM
recipes.
"""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` then cosine decay over the remaining steps."""
    peak = train_config.learning_rate
    warmup = min(train_config.warmup_steps, train_config.num_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=train_config.num_steps,
        end_value=peak * train_config.min_lr_ratio,
    )


def make_optimizer(train_config) -> optax.GradientTransformation:
    """AdamW with the schedule above, preceded by clipping when ``grad_clip > 0``."""
    adamw = optax.adamw(
        learning_rate_schedule(train_config),
        b1=train_config.adam_b1,
        b2=train_config.adam_b2,
        eps=1e-8,
        weight_decay=train_config.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
    )
    if train_config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train_config.grad_clip), adamw)
    return adamw
