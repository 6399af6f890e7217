"""Loading and validating ml_collections configs.

``configs/base.py:get_config()`` is the one place defaults live; experiment configs import it and
change what differs. ``validate`` runs before any work starts (no compilation, no data loading)
and raises a single ``ValueError`` that lists every problem, each naming the key, the bad value
and what is allowed::

    config.model.num_heads = 6: must be a multiple of model.num_kv_heads = 4

This module holds the loader, the schema check against ``configs/base.py`` and ``validate``;
the rules live beside what they check, in each package's ``checks.py`` (``lcm.model.checks``,
``lcm.attention.checks``, ``lcm.data.checks``, ...), each writing into one ``lcm.checks.Errors``.
It sits above the model (``validate`` builds the ``ModelSpec``); only entry points import it.

Command-line entry points load configs with ``config_flags.DEFINE_config_file(...,
lock_config=True)`` (so a misspelled ``--config.a.b`` override fails) and then call
``validate``; ``load_config`` is the same for notebooks and tests.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

from ml_collections import ConfigDict, FieldReference

from lcm import checks
from lcm.attention import checks as attention_checks
from lcm.data import checks as data_checks
from lcm.eval import checks as eval_checks
from lcm.inference import checks as inference_checks
from lcm.model import checks as model_checks
from lcm.parallel import checks as parallel_checks
from lcm.positional import checks as positional_checks
from lcm.train import checks as train_checks

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "configs" / "base.py"


def load_config(spec: str) -> ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config([arg])``; returns it locked."""
    path, _, arg = str(spec).partition(":")
    if str(REPO_ROOT) not in sys.path:  # experiment configs import `configs.base`
        sys.path.insert(0, str(REPO_ROOT))
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_lcm_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config


def base_config() -> ConfigDict:
    """The defaults from ``configs/base.py``."""
    return load_config(str(BASE_CONFIG))


def _leaves(config: ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _field_type(config: ConfigDict, key: str) -> type | None:
    """Declared type of a leaf: the placeholder's type for None-valued references."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    ref = node.get_ref(leaf) if hasattr(node, "get_ref") else None
    if isinstance(ref, FieldReference):
        return ref.get_type()
    value = node[leaf]
    return None if value is None else type(value)


def _check_schema(e: checks.Errors, base: ConfigDict) -> None:
    """Unknown keys, missing keys and wrong types, against ``configs/base.py``."""
    base_keys = dict(_leaves(base))
    own_keys = dict(_leaves(e.config))
    for key in sorted(set(own_keys) - set(base_keys)):
        parent = base
        for part in key.split(".")[:-1]:
            parent = parent.get(part) if isinstance(parent, ConfigDict) else None
        siblings = sorted(parent.keys()) if isinstance(parent, ConfigDict) else []
        e.fail(key, f"unknown key; allowed keys here: {', '.join(siblings)}")
    for key in sorted(set(base_keys) - set(own_keys)):
        e.add(f"config.{key} is missing (configs/base.py defines it)")
    for key in sorted(set(base_keys) & set(own_keys)):
        want, value = _field_type(base, key), own_keys[key]
        if want is None or value is None:
            continue
        if want is float and checks.is_number(value):
            continue
        if want in (tuple, list) and isinstance(value, tuple | list):
            continue
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            e.fail(key, f"must be of type {want.__name__}")


def validate(config: ConfigDict, *, num_devices: int | None = None) -> ConfigDict:
    """Checks ``config`` against the schema and rules; returns it unchanged or raises.

    Args:
      config: a config built from ``configs/base.py``.
      num_devices: when given, also checks the mesh against this many devices and the batch,
        sequence and head counts against the mesh axis sizes.

    Raises:
      ValueError: listing every problem, one per line, each naming the key.
    """
    e = checks.Errors(config)
    _check_schema(e, base_config())
    if not e.lines:  # the rules below assume every key exists with a sensible type
        model_checks.check_config(e)
        positional_checks.check_config(e)
        attention_checks.check_config(e)
        data_checks.check_config(e)
        train_checks.check_config(e)
        eval_checks.check_config(e)
        inference_checks.check_config(e)
        sizes = parallel_checks.check_config(e, num_devices)
        if sizes is not None:
            attention_checks.check_mesh(e, sizes)
    if not e.lines:  # needs every model field valid
        model_checks.check_spec(e)
    if e.lines:
        raise ValueError("invalid config:\n  " + "\n  ".join(e.lines))
    return config
