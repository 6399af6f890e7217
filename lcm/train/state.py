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
import numpy as np
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


def _place(x, abstract, sharding):
    """``x`` in ``sharding``: a jax array already there is kept (no copy), one elsewhere is
    resharded device to device; a host array is cast on the host and each device gets only its
    shard (``device_put``)."""
    if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        return jax.device_put(x, sharding)
    return jax.device_put(np.asarray(x, abstract.dtype), sharding)


def state_from_params(params, tx, abstract: TrainState, shardings) -> TrainState:
    """A step-0 state holding given ``params`` (e.g. ``lcm.hf.load_sharded``'s, or a
    restored checkpoint's), cast to the parameter dtypes of ``abstract``, in ``shardings``.

    Params already in ``shardings.params`` are used as they are: the jitted initializer only
    builds the optimizer state around them (``out_shardings``; the params are donated, so the
    state's params are the same buffers when the dtypes match, and the caller's arrays are
    consumed). No device ever holds more than its shard of a sharded param.
    """
    params = jax.tree.map(_place, params, abstract.params, shardings.params)

    def init(params):
        params = jax.tree.map(lambda x, a: x.astype(a.dtype), params, abstract.params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(init, out_shardings=shardings, donate_argnums=0)(params)
