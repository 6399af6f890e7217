"""The compiled programs of a run, built once from a config and a mesh: ``build_program``.

``lcm.train`` runs them and ``lcm.compile`` compiles them ahead of time for a TPU slice, so both
see the same jitted train and eval steps with the same shardings. Building touches no device:
the state exists only as shapes and shardings (``abstract``) until ``init_state`` or a restore
fills it, so a mesh of compile-only TPU devices works as well as a real one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lcm import model as model_lib
from lcm.parallel import sharding
from lcm.train import optimizer
from lcm.train import state as state_lib
from lcm.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Program:
    spec: model_lib.ModelSpec
    model: Any  # lcm.model.Transformer
    tx: Any  # optax.GradientTransformation
    abstract: state_lib.TrainState  # ShapeDtypeStructs carrying their shardings
    shardings: state_lib.TrainState  # NamedSharding per leaf
    batch_sharding: jax.sharding.NamedSharding  # every [B, T] batch array
    train_step: Any  # jitted (state, batch) -> (state, metrics); donates the state
    eval_step: Any  # jitted (params, batch) -> {"nll_sum", "tokens"}

    def abstract_batch(self, batch_size: int, seq_len: int) -> dict:
        """Shapes and shardings of one global batch (every key of ``step.BATCH_KEYS``)."""
        shape = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=self.batch_sharding)
        return {key: shape for key in step_lib.BATCH_KEYS}


def build_program(config, mesh: jax.sharding.Mesh, rules) -> Program:
    """The model, optimizer, abstract state and jitted steps of ``config`` on ``mesh``.

    Call inside ``lcm.parallel.sharding.use_mesh(mesh, rules)``; ``config`` is validated.
    """
    spec = model_lib.build_spec(config)
    model = model_lib.Transformer(spec)
    tx = optimizer.make_optimizer(config.train)
    abstract, shardings = state_lib.state_shardings(
        model, tx, mesh, rules, batch_size=config.data.batch_size, seq_len=config.data.seq_len
    )
    batch_sharding = sharding.named_sharding(mesh, ("batch", "length"), rules)
    t = config.train
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(model, tx, z_loss=t.z_loss, grad_accum_steps=t.grad_accum_steps),
        shardings,
        batch_sharding,
    )
    eval_step = step_lib.jit_eval_step(
        step_lib.make_eval_step(model), shardings.params, batch_sharding
    )
    return Program(spec, model, tx, abstract, shardings, batch_sharding, train_step, eval_step)
