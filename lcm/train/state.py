"""Train state and its sharded initialization.

Parameters are created with logical axis names (``lcm.parallel.sharding.param``); the optimizer
state inherits them, so one ``eval_shape`` of the boxed initializer gives the sharding of the
whole state. Initialization is jitted with those out-shardings, so no host ever holds the full
unsharded state.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any


def dummy_inputs(batch_size: int, seq_len: int):
    """Shape-only model inputs ``(tokens, positions, segment_ids)`` for ``model.init``."""
    tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch_size, seq_len))
    return tokens, positions, jnp.ones_like(tokens)


def _boxed_init(model: nn.Module, tx: optax.GradientTransformation, batch_size, seq_len):
    def init(rng):
        params = model.init(rng, *dummy_inputs(batch_size, seq_len))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def state_shardings(model, tx, mesh, rules, *, batch_size: int, seq_len: int):
    """``(abstract_state, shardings)``: shapes/dtypes and ``NamedSharding`` of every leaf.

    Runs nothing on any device (the key is abstract too), so ``mesh`` may hold compile-only
    devices (``lcm.compile``).
    """
    init = _boxed_init(model, tx, batch_size, seq_len)
    rng = jax.eval_shape(jax.random.key, 0)
    boxed = jax.eval_shape(init, rng)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, tuple(rules))
    plain = jax.eval_shape(lambda rng: nn.unbox(init(rng)), rng)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), plain, shardings
    )
    return abstract, shardings


def init_state(model, tx, shardings, seed: int, *, batch_size: int, seq_len: int) -> TrainState:
    """Initializes the state directly into ``shardings``."""
    init = _boxed_init(model, tx, batch_size, seq_len)
    return jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(seed))


def state_from_params(params, tx, abstract: TrainState, shardings) -> TrainState:
    """A step-0 state holding given ``params`` (e.g. a Hugging Face checkpoint's), cast to the
    parameter dtypes of ``abstract`` and placed into ``shardings``."""
    params = jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), params, abstract.params)

    def init(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(init, out_shardings=shardings)(params)
