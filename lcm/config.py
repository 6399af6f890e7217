"""Loading and validating ml_collections configs.

``configs/base.py:get_config()`` is the one place defaults live; experiment configs import it and
change what differs. ``validate`` runs before any work starts (no compilation, no data loading)
and raises a single ``ValueError`` that lists every problem, each naming the key, the bad value
and what is allowed::

    config.model.num_heads = 6: must be a multiple of model.num_kv_heads = 4

Command-line entry points load configs with ``config_flags.DEFINE_config_file(...,
lock_config=True)`` (so a misspelled ``--config.a.b`` override fails) and then call
``validate``; ``load_config`` is the same for notebooks and tests.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

from ml_collections import ConfigDict, FieldReference

from lcm.attention import ATTENTION
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO_ROOT / "configs" / "base.py"

DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
ROPE_LAYOUTS = ("half", "interleaved")
MASKS = ("causal", "sliding_window", "chunked_causal", "full")
CORPORA = ("stdlib", "text", "jsonl")
EVAL_PROTOCOLS = ("truncate", "sliding")
# Implementations that tile the sequence: their block sizes must divide the training length.
TILED_IMPLS = ("blockwise", "pallas", "ring")


def load_config(spec: str) -> ConfigDict:
    """Loads ``path/to/config.py[:arg]`` by calling its ``get_config([arg])``; returns it locked."""
    path, _, arg = str(spec).partition(":")
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


class _Checker:
    """Collects problems as ``config.<key> = <value>: <what is allowed>`` lines."""

    def __init__(self, config: ConfigDict):
        self.config = config
        self.errors: list[str] = []

    def get(self, key: str) -> Any:
        node = self.config
        for part in key.split("."):
            node = node[part]
        return node

    def fail(self, key: str, message: str) -> None:
        try:
            value = self.get(key)
        except (KeyError, AttributeError):
            value = "<missing>"
        self.errors.append(f"config.{key} = {value!r}: {message}")

    def check(self, key: str, ok: Callable[[Any], bool], message: str) -> bool:
        try:
            good = bool(ok(self.get(key)))
        except (TypeError, ValueError):
            good = False
        if not good:
            self.fail(key, message)
        return good

    def positive_int(self, *keys: str) -> None:
        for key in keys:
            self.check(key, _is_positive_int, "must be a positive integer")

    def non_negative(self, *keys: str) -> None:
        for key in keys:
            self.check(key, lambda v: _is_number(v) and v >= 0, "must be a number >= 0")

    def positive(self, *keys: str) -> None:
        for key in keys:
            self.check(key, lambda v: _is_number(v) and v > 0, "must be a number > 0")

    def one_of(self, key: str, allowed: tuple) -> bool:
        return self.check(
            key, lambda v: v in allowed, f"allowed: {', '.join(repr(a) for a in allowed)}"
        )


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


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


def _check_schema(c: _Checker, base: ConfigDict) -> None:
    """Unknown keys, missing keys and wrong types, against ``configs/base.py``."""
    base_keys = dict(_leaves(base))
    own_keys = dict(_leaves(c.config))
    for key in sorted(set(own_keys) - set(base_keys)):
        parent = base
        for part in key.split(".")[:-1]:
            parent = parent.get(part) if isinstance(parent, ConfigDict) else None
        siblings = sorted(parent.keys()) if isinstance(parent, ConfigDict) else []
        c.fail(key, f"unknown key; allowed keys here: {', '.join(siblings)}")
    for key in sorted(set(base_keys) - set(own_keys)):
        c.errors.append(f"config.{key} is missing (configs/base.py defines it)")
    for key in sorted(set(base_keys) & set(own_keys)):
        want, value = _field_type(base, key), own_keys[key]
        if want is None or value is None:
            continue
        if want is float and _is_number(value):
            continue
        if want in (tuple, list) and isinstance(value, tuple | list):
            continue
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            c.fail(key, f"must be of type {want.__name__}")


def _check_model(c: _Checker) -> None:
    m = "model."
    c.positive_int(
        *(
            m + k
            for k in (
                "vocab_size",
                "d_model",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "head_dim",
                "mlp_dim",
            )
        )
    )
    heads, kv_heads = c.get(m + "num_heads"), c.get(m + "num_kv_heads")
    if _is_positive_int(heads) and _is_positive_int(kv_heads) and heads % kv_heads:
        c.fail(m + "num_heads", f"must be a multiple of model.num_kv_heads = {kv_heads}")
    c.check(m + "head_dim", lambda v: v % 2 == 0, "must be even (RoPE rotates pairs)")
    c.one_of(m + "dtype", DTYPES)
    c.one_of(m + "param_dtype", DTYPES)
    c.one_of(m + "remat_policy", REMAT_POLICIES)

    p = m + "positional."
    c.positive(p + "base")
    c.one_of(p + "layout", ROPE_LAYOUTS)
    c.check(
        p + "partial_rotary_factor",
        lambda v: _is_number(v) and 0 < v <= 1,
        "must be in (0, 1]",
    )
    c.positive(p + "rope_scaling.factor")

    a = m + "attention."
    c.one_of(a + "impl", tuple(ATTENTION.names()))
    c.one_of(a + "mask", MASKS)
    c.check(a + "window", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    if c.get(a + "mask") in ("sliding_window", "chunked_causal"):
        c.check(a + "window", _is_positive_int, f"must be > 0 when {a}mask is not causal/full")
    c.positive_int(a + "block_q", a + "block_kv")
    seq_len = c.get("seq_len")
    if c.get(a + "impl") in TILED_IMPLS and _is_positive_int(seq_len):
        for key in ("block_q", "block_kv"):
            block = c.get(a + key)
            if _is_positive_int(block) and seq_len % block:
                c.fail(
                    "seq_len",
                    f"must be a multiple of model.attention.{key} = {block} "
                    f"for model.attention.impl = {c.get(a + 'impl')!r}",
                )


def _check_data_train_eval(c: _Checker) -> None:
    c.check("train.seed", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0")
    c.positive_int("seq_len", "data.batch_size")
    if c.one_of("data.corpus", CORPORA) and c.get("data.corpus") in ("text", "jsonl"):
        c.check("data.path", lambda v: bool(v), "is required when data.corpus is text or jsonl")
    c.positive_int("train.num_steps", "train.log_every", "train.checkpoint_every")
    c.positive("train.learning_rate")
    c.check(
        "train.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "must be an integer >= 0"
    )
    c.non_negative("train.weight_decay", "train.grad_clip")
    c.check(
        "eval.lengths",
        lambda v: len(v) > 0 and all(_is_positive_int(x) for x in v),
        "must be a non-empty tuple of positive integers",
    )
    c.one_of("eval.protocol", EVAL_PROTOCOLS)
    c.positive_int("eval.num_documents")


def _check_mesh(c: _Checker, num_devices: int | None) -> None:
    try:
        mesh_lib.check_axes(c.get("mesh.axes"), c.get("mesh.shape"), c.get("mesh.axis_types"))
        sharding.validate_rules(c.get("mesh.rules"), c.get("mesh.axes"))
        if num_devices is None:
            return
        shape = mesh_lib.resolve_shape(c.get("mesh.shape"), num_devices)
    except ValueError as e:
        c.errors.append(f"config.{e}")
        return
    sizes = dict(zip(c.get("mesh.axes"), shape, strict=True))
    batch_shards = sizes["data"] * sizes["fsdp"]
    if _is_positive_int(c.get("data.batch_size")) and c.get("data.batch_size") % batch_shards:
        c.fail("data.batch_size", f"must be a multiple of mesh data*fsdp = {batch_shards}")
    if _is_positive_int(c.get("seq_len")) and c.get("seq_len") % sizes["context"]:
        c.fail("seq_len", f"must be a multiple of the mesh context size {sizes['context']}")
    kv_heads = c.get("model.num_kv_heads")
    if _is_positive_int(kv_heads) and kv_heads % sizes["tensor"]:
        c.fail(
            "model.num_kv_heads", f"must be a multiple of the mesh tensor size {sizes['tensor']}"
        )


def validate(config: ConfigDict, *, num_devices: int | None = None) -> ConfigDict:
    """Checks ``config`` against the schema and rules; returns it unchanged or raises.

    Args:
      config: a config built from ``configs/base.py``.
      num_devices: when given, also checks the mesh against this many devices and the batch,
        sequence and head counts against the mesh axis sizes.

    Raises:
      ValueError: listing every problem, one per line, each naming the key.
    """
    c = _Checker(config)
    _check_schema(c, base_config())
    if not c.errors:  # the rules below assume every key exists with a sensible type
        _check_model(c)
        _check_data_train_eval(c)
        _check_mesh(c, num_devices)
    if c.errors:
        raise ValueError("invalid config:\n  " + "\n  ".join(c.errors))
    return config
