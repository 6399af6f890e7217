"""Numerical health of a run: non-finite steps and loss spikes.

Inside the jitted step (``finite_update``) a step whose loss or any gradient's squared norm is not
finite keeps the previous parameters and optimizer state bit for bit (``jnp.where``, no host
sync). A gradient whose squared norm overflows float32 counts as non-finite too: global-norm
clipping would turn it into NaN updates. The step returns one finiteness flag per parameter, so
the host can name the offending parameters without recomputing anything.

On the host, ``Health.review`` reads those per-step values in batches (the loop fetches them at
log and checkpoint steps only) and applies ``config.train.nonfinite``: ``stop`` raises
``NonFiniteError`` naming the step and the parameters, ``skip`` counts the step and goes on. It
also flags loss spikes, ``loss > spike_factor x`` the bias-corrected exponential moving average
of the earlier finite losses (Adam's bias correction, Kingma & Ba 2015). Its counters are saved
with every checkpoint, so a resumed run reports exactly what the uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

POLICIES = ("stop", "skip")
MAX_NAMED_PARAMS = 5  # parameters listed in a NonFiniteError message


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient under ``config.train.nonfinite = "stop"``."""


def finite_update(loss, grads, new, old):
    """``(kept, finite, leaf_finite, grad_norm)`` for one step (traced inside jit).

    Args:
      loss: the float32 scalar loss of the step.
      grads: the gradient pytree (same structure as the parameters).
      new: the pytree the update produced (e.g. ``(params, opt_state)``).
      old: the same pytree before the update.

    Returns:
      ``new`` where the step is finite, else ``old`` (leaf for leaf, bit-exact); the step's
      finiteness (bool scalar); one bool per gradient leaf in ``jax.tree.leaves`` order (its
      squared norm is finite); and the global gradient norm.
    """
    squares = jnp.stack(
        [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)]
    )
    leaf_finite = jnp.isfinite(squares)
    finite = jnp.isfinite(loss) & jnp.all(leaf_finite)
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    return kept, finite, leaf_finite, jnp.sqrt(jnp.sum(squares))


def param_paths(params) -> list[str]:
    """Names of the parameter leaves, in ``jax.tree.leaves`` order (``layers/mlp/wi``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]


@dataclasses.dataclass
class Health:
    """Host-side policy and counters; ``state()`` / ``load()`` go into checkpoints."""

    policy: str  # config.train.nonfinite
    spike_factor: float  # 0 = no spike detection
    spike_decay: float
    param_names: list[str]
    skipped: int = 0  # steps whose update was dropped
    loss_ema: float = 0.0  # moving average of finite losses, not bias-corrected
    ema_steps: int = 0  # finite losses folded into loss_ema

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(
                f"config.train.nonfinite = {self.policy!r}: allowed: {', '.join(POLICIES)}"
            )

    def review(self, step: int, loss: float, finite: bool, leaf_finite) -> tuple[dict, str | None]:
        """Applies the policy to one finished step.

        Returns:
          Extra metrics.jsonl fields for the step (empty when all is well) and a message to
          print, or None.

        Raises:
          NonFiniteError: the step is not finite and the policy is ``stop``.
        """
        if not finite:
            bad = [n for n, ok in zip(self.param_names, leaf_finite, strict=True) if not ok]
            more = len(bad) - MAX_NAMED_PARAMS
            names = ", ".join(bad[:MAX_NAMED_PARAMS]) + (f" and {more} more" if more > 0 else "")
            where = f"gradients of {names}" if bad else "the loss only (every gradient finite)"
            if self.policy == "stop":
                raise NonFiniteError(
                    f"non-finite step {step}: loss {loss}, non-finite {where}; the update was "
                    "not applied and nothing after the last checkpoint was saved "
                    "(config.train.nonfinite = 'stop'; 'skip' drops such updates and goes on)"
                )
            self.skipped += 1
            message = f"step {step}: non-finite {where} (loss {loss}); update skipped"
            return {"nonfinite": 1.0, "skipped_steps": self.skipped}, message
        extras, message = {}, None
        if self.ema_steps and self.spike_factor > 0:
            mean = self.loss_ema / (1.0 - self.spike_decay**self.ema_steps)
            if loss > self.spike_factor * mean:
                extras = {"loss_spike": 1.0, "loss_mean": mean}
                message = (
                    f"step {step}: loss spike {loss:.4f} > {self.spike_factor:g} x running mean "
                    f"{mean:.4f}"
                )
        self.loss_ema = self.spike_decay * self.loss_ema + (1.0 - self.spike_decay) * loss
        self.ema_steps += 1
        return extras, message

    def state(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "loss_ema": self.loss_ema, "ema_steps": self.ema_steps}

    def load(self, state: dict[str, Any]) -> None:
        self.skipped = int(state["skipped"])
        self.loss_ema = float(state["loss_ema"])
        self.ema_steps = int(state["ema_steps"])
