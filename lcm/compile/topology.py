"""The compile-only devices of a TPU slice, from libtpu on any host (no TPU needed).

``jax.experimental.topologies.get_topology_desc`` hands out devices that programs can be
lowered and compiled for, never run on: so nothing on the path from config to compiled step may
execute on them (no eager ops under their mesh). libtpu takes a lock file when it loads;
``ALLOW_MULTIPLE_LIBTPU_LOAD`` lets several processes (pytest-xdist workers) load it at once.
"""

from __future__ import annotations

import functools
import os

import jax
from jax.experimental import topologies

from lcm.chips import Chip, parse_topology


@functools.cache
def devices(name: str) -> tuple[jax.Device, ...]:
    """The devices of topology ``name`` (e.g. ``"v5e:2x2"``), one per chip."""
    parse_topology(name)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask
    # v4 would otherwise give one device per TensorCore; JAX on a v4 VM uses megacore.
    options = {"chip_config_name": "megacore"} if name.startswith("v4:") else {}
    topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **options)
    return tuple(topo.devices)


def chip(name: str) -> Chip:
    return parse_topology(name)[0]
