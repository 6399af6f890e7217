"""Logical axis names and their mapping onto mesh axes.

The model names array dimensions only with logical names; mesh axes (``data, fsdp, context,
tensor``) appear only in configs and in ``lcm.parallel``. This module is the one place that
touches flax's sharding-metadata API, so a later move away from linen changes one file.

Logical names (dimension letters from DESIGN.md in brackets):

==========  ======================  ===========================
name        meaning                 default mesh axes
==========  ======================  ===========================
batch       [B] examples            (data, fsdp)
length      [T] query positions     context
kv_length   [S] key positions       context
embed       [D] model width         (fsdp, context)
heads       [N] query heads         tensor
kv_heads    [K] key/value heads     tensor
mlp         [F] MLP width           tensor
vocab       [V] vocabulary          tensor
head_dim    [H] per-head width      (replicated)
layers      [L] scanned layers      (replicated)
==========  ======================  ===========================

Parameters carry ``embed`` (every weight has a model-width dim), so they and their optimizer
state are sharded over ``fsdp`` and ``context``: context-parallel ranks hold the same model and
would otherwise each keep a whole copy of it. Activations name ``batch`` and ``length`` before
``embed``; a mesh axis is used once per array, so their model-width dim stays unsharded.

The table itself lives in ``configs/base.py`` (``config.mesh.rules``) so experiments can change
it; ``DEFAULT_RULES`` mirrors it for code that runs without a config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

LOGICAL_AXES = (
    "batch",
    "length",
    "kv_length",
    "embed",
    "heads",
    "kv_heads",
    "mlp",
    "vocab",
    "head_dim",
    "layers",
)

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("kv_length", "context"),
    ("embed", ("fsdp", "context")),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
)


def validate_rules(rules: Rules, mesh_axes: Sequence[str]) -> tuple:
    """Checks a rule table; returns it as a tuple of ``(logical, mesh axes)`` pairs."""
    out = []
    for entry in rules:
        if len(entry) != 2:
            raise ValueError(f"mesh.rules entry {entry!r}: expected (logical_name, mesh_axes)")
        logical, target = entry
        if logical not in LOGICAL_AXES:
            raise ValueError(
                f"mesh.rules: unknown logical axis {logical!r}; allowed: {', '.join(LOGICAL_AXES)}"
            )
        targets = () if target is None else (target,) if isinstance(target, str) else target
        bad = [t for t in targets if t not in mesh_axes]
        if bad:
            raise ValueError(
                f"mesh.rules[{logical!r}] -> {target!r}: unknown mesh axis {bad}; "
                f"allowed: {', '.join(mesh_axes)}"
            )
        out.append((logical, None if target is None else tuple(targets)))
    return tuple(out)


def logical_spec(names: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """``PartitionSpec`` for an array whose dimensions carry logical ``names``."""
    return nn.logical_to_mesh_axes(tuple(names), tuple(rules))


def named_sharding(
    mesh: jax.sharding.Mesh, names: Sequence[str | None], rules: Rules = DEFAULT_RULES
) -> NamedSharding:
    """``NamedSharding`` on ``mesh`` for an array with logical dimension ``names``."""
    return NamedSharding(mesh, logical_spec(names, rules))


def axis_rules(rules: Rules):
    """Context manager making ``rules`` the table used by ``constrain`` and ``param``."""
    return nn.logical_axis_rules(tuple(rules))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins activation ``x`` to the sharding of its logical ``names`` (rules from context).

    A no-op outside a mesh. On ``Auto`` axes this is a sharding constraint that the SPMD
    partitioner propagates from; on ``Explicit`` axes, where the sharding is part of the type
    and a constraint would only assert, it is an explicit ``reshard``.
    """
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return constrain_spec(x, nn.logical_to_mesh_axes(tuple(names)))


def constrain_spec(x: jax.Array, spec: PartitionSpec, mesh=None) -> jax.Array:
    """``constrain`` with a mesh-axis ``PartitionSpec`` (for code that names mesh axes: ring),
    on ``mesh`` or, by default, the mesh in context."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh.empty:
        return x
    target = NamedSharding(mesh, spec)
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.sharding.reshard(x, target)
    return jax.lax.with_sharding_constraint(x, target)


def mesh_axes(logical: str) -> tuple[str, ...]:
    """The mesh axes logical axis ``logical`` maps to under the rules in context (() if none)."""
    (axes,) = nn.logical_to_mesh_axes((logical,))
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def param(init_fn, names: Sequence[str | None]):
    """Wraps a flax initializer so the parameter carries logical axis ``names``."""
    return nn.with_logical_partitioning(init_fn, tuple(names))


def param_shardings(abstract_variables, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
    """Pytree of ``NamedSharding`` for variables created with ``param`` (boxed or abstract)."""
    specs = nn.get_partition_spec(abstract_variables)
    return nn.logical_to_mesh_sharding(specs, mesh, tuple(rules))


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
    """Enters ``mesh`` (``jax.set_mesh``) and the logical ``rules`` together."""
    with jax.set_mesh(mesh), axis_rules(rules):
        yield mesh
