"""The jitted train and eval steps.

The loss is next-token cross-entropy in float32 averaged over ``loss_mask`` tokens (padding and
document-boundary targets masked by the data pipeline), plus an optional z-loss
``z_loss * logsumexp(logits)^2`` (PaLM, Chowdhery et al. 2022) that keeps the softmax normalizer
near 1. The loss never holds the full ``[B,T,V]`` logits: the model stops at its final hidden
states and ``lcm.model.head.chunked_cross_entropy`` applies the output head, log-softmax, NLL and
z-loss to ``config.model.loss_chunk`` positions at a time in a rematerialized ``lax.scan``, so
the logits and their gradient take ``O(B x loss_chunk x V)`` memory (``loss_chunk = 0``: full
logits, as inference and ``cross_entropy`` use them).

Gradient accumulation splits the global batch into ``grad_accum_steps`` micro-batches scanned
inside one step, so one step is always one optimizer update on the same tokens. A step whose
loss or gradients are not finite applies no update (``lcm.train.health``) and says so in its
metrics (``finite``, and ``leaf_finite`` per parameter).

``jax.jit`` appears here (and in eval) only, with explicit in/out shardings and the state
donated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from lcm.model import head
from lcm.parallel import sharding
from lcm.train import health
from lcm.train.state import TrainState

BATCH_KEYS = ("inputs", "targets", "positions", "segment_ids", "loss_mask")


# Summed masked token loss, summed z-loss and token count of full logits (benchmarks, tests).
cross_entropy = head.cross_entropy


def split_micro_batches(x, steps: int):
    """``[B, ...] -> [steps, B / steps, ...]``; micro-batch ``a`` holds rows ``a, a + steps, ...``.

    Rows are dealt out strided, not in contiguous blocks: with the batch sharded in blocks over
    the data axes, every device then holds its share of every micro-batch, so the split moves
    no data (a contiguous split would put whole micro-batches on some devices and make XLA
    gather the batch). The loss sums over all tokens, so which rows share a micro-batch does not
    change the step.
    """
    x = x.reshape(-1, steps, *x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(x, (None, "batch", *(None,) * (x.ndim - 2)))


def _forward_loss(model, z_loss):
    def loss_fn(params, batch):
        nll, z_term, tokens = head.model_cross_entropy(
            model,
            params,
            *(batch[k] for k in ("inputs", "positions", "segment_ids", "targets", "loss_mask")),
            z_loss=z_loss,
        )
        return nll + z_term, (nll, tokens)

    return loss_fn


def make_train_step(
    model, tx: optax.GradientTransformation, *, z_loss: float, grad_accum_steps: int
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Returns ``step(state, batch) -> (state, metrics)`` (not yet jitted)."""
    loss_fn = _forward_loss(model, z_loss)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if grad_accum_steps == 1:
            (_, (nll, tokens)), grads = grad_fn(state.params, batch)
        else:
            micro = jax.tree.map(lambda x: split_micro_batches(x, grad_accum_steps), batch)

            def accumulate(carry, mb):
                (_, (nll, tokens)), grads = grad_fn(state.params, mb)
                return jax.tree.map(jnp.add, carry, (grads, nll, tokens)), None

            zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.float32(0), jnp.float32(0))
            (grads, nll, tokens), _ = jax.lax.scan(accumulate, zeros, micro)
        # The summed loss is normalized once, over all tokens of the global batch.
        denom = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = nll / denom
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite step keeps the previous params and optimizer state (lcm.train.health).
        (params, opt_state), finite, leaf_finite, grad_norm = health.finite_update(
            loss, grads, (params, opt_state), (state.params, state.opt_state)
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "tokens": tokens,
            "finite": finite,
            "leaf_finite": leaf_finite,
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_eval_step(model) -> Callable[[dict, dict], dict]:
    """Returns ``eval_step(params, batch) -> {"nll_sum", "tokens"}`` (not yet jitted)."""
    loss_fn = _forward_loss(model, 0.0)

    def eval_step(params, batch):
        _, (nll, tokens) = loss_fn(params, batch)
        return {"nll_sum": nll, "tokens": tokens}

    return eval_step


def jit_train_step(step_fn, state_shardings, batch_sharding):
    """Jits ``step_fn`` with explicit shardings; the input state is donated."""
    batch_shardings = {k: batch_sharding for k in BATCH_KEYS}
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )


def jit_eval_step(eval_fn, param_shardings, batch_sharding):
    """Jits ``eval_fn`` with the parameters and the batch in their training shardings."""
    batch_shardings = {k: batch_sharding for k in BATCH_KEYS}
    return jax.jit(eval_fn, in_shardings=(param_shardings, batch_shardings))
