"""Device mesh from a config block.

``config.mesh`` holds the axis names (always ``data, fsdp, context, tensor`` in that order, the
names the logical rules in ``sharding.py`` map onto), their sizes with at most one ``-1`` meaning
"all remaining devices", and the axis type.

Axis types. ``jax.make_mesh`` now makes ``Explicit`` axes by default, where every array carries
its sharding in its type and ambiguous ops must say where their output lives. lcm defaults to
``Auto`` instead: the model states shardings only at a few boundaries (parameters, batch,
block-edge constraints through logical names) and lets XLA's SPMD partitioner propagate the
rest, which is how MaxText and the flax examples run and keeps research code free of per-op
sharding annotations. ``axis_types="explicit"`` is supported for users who want sharding in
types; components are tested on both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils

MESH_AXES = ("data", "fsdp", "context", "tensor")
AXIS_TYPES = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}


def resolve_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces the single ``-1`` in ``shape`` so the product equals ``num_devices``."""
    shape = tuple(int(s) for s in shape)
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape = {shape}: sizes must be positive or -1 (fill)")
    fills = shape.count(-1)
    if fills > 1:
        raise ValueError(f"mesh.shape = {shape}: at most one -1 is allowed, got {fills}")
    known = math.prod(s for s in shape if s != -1)
    if fills:
        if num_devices % known:
            raise ValueError(
                f"mesh.shape = {shape}: the fixed sizes multiply to {known}, which does not "
                f"divide the {num_devices} devices available"
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    elif known != num_devices:
        raise ValueError(
            f"mesh.shape = {shape}: product {known} != {num_devices} devices available; "
            "make the sizes multiply to the device count or use -1 for one axis"
        )
    return shape


def check_axes(axes: Sequence[str], shape: Sequence[int], axis_types: str) -> None:
    """Validates axis names, the number of sizes and the axis type, without devices."""
    axes = tuple(axes)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
        raise ValueError(
            f"mesh.axes = {axes}: unknown axis name(s) {unknown}; allowed: {', '.join(MESH_AXES)}"
        )
    if len(set(axes)) != len(axes):
        raise ValueError(f"mesh.axes = {axes}: axis names must be distinct")
    missing = [a for a in MESH_AXES if a not in axes]
    if missing:
        raise ValueError(
            f"mesh.axes = {axes}: missing {missing}; name all of {', '.join(MESH_AXES)} "
            "(give unused axes size 1)"
        )
    if len(tuple(shape)) != len(axes):
        raise ValueError(
            f"mesh.shape = {tuple(shape)} has {len(tuple(shape))} sizes "
            f"but mesh.axes = {axes} has {len(axes)}"
        )
    if axis_types not in AXIS_TYPES:
        raise ValueError(
            f"mesh.axis_types = {axis_types!r}; allowed: {', '.join(repr(k) for k in AXIS_TYPES)}"
        )


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Builds the ``jax.sharding.Mesh`` described by ``mesh_config``.

    Args:
      mesh_config: mapping with ``axes`` (each of ``MESH_AXES`` once, in any order), ``shape``
        (one size per axis, at most one ``-1``) and ``axis_types`` (``"auto"``/``"explicit"``).
      devices: devices to lay out; defaults to ``jax.devices()`` (all hosts).

    Returns:
      A mesh whose axis sizes multiply to the number of devices.
    """
    axes, shape, kind = mesh_config["axes"], mesh_config["shape"], mesh_config["axis_types"]
    check_axes(axes, shape, kind)
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_shape(shape, len(devices))
    # Laid out on the physical torus like jax.make_mesh; an axis that needs part of a physical
    # axis (fsdp 32 x context 2 on a 4x4x4 v5p slice) splits it instead of failing.
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, tuple(axes), axis_types=(AXIS_TYPES[kind],) * len(axes))


def describe(mesh: jax.sharding.Mesh) -> str:
    """One line naming each axis with its size, e.g. ``data=2 fsdp=1 context=4 tensor=1``."""
    return " ".join(f"{name}={size}" for name, size in mesh.shape.items()) + (
        f" ({np.prod(list(mesh.shape.values()))} devices, {jax.devices()[0].platform})"
    )
