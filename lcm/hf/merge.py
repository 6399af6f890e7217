"""``with_checkpoint`` / ``checkpoint_config``: a run's config plus the model of
``config.model.hf_path`` (with its host params, or config only)."""

from __future__ import annotations

from ml_collections import ConfigDict

from lcm.config import base_config
from lcm.hf.weights import load, load_config

# Fields a checkpoint's weights fix: a config that sets them differently cannot use the weights.
_ARCHITECTURE = (
    "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
    "tie_embeddings", "qkv_bias", "qk_norm", "norm", "parallel_block", "logit_scale",
)  # fmt: skip


def _flat(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, ConfigDict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def checkpoint_config(config) -> ConfigDict:
    """``config`` with the model of ``config.model.hf_path`` (reads only its config.json).

    Every ``config.model`` field (and ``data.tokenizer``) left at its ``configs/base.py``
    default takes the checkpoint's value; fields the config sets differently are kept, so
    ``--config.model.hf_path=DIR --config.model.positional.rope_scaling.rope_type=yarn ...``
    runs the checkpoint with another positional scheme or attention implementation.

    Raises:
      ValueError: ``hf_path`` unset, or an architecture field set to a value the weights
        cannot have (listed).
    """
    if config.model.hf_path is None:
        raise ValueError("config.model.hf_path is None: no checkpoint to load")
    loaded = load_config(config.model.hf_path)
    base = dict(_flat(base_config().model))
    merged = config.copy_and_resolve_references()
    checkpoint = dict(_flat(loaded.model))
    with merged.unlocked():
        taken, clashes = {}, []
        for key, value in _flat(config.model):
            theirs = checkpoint[key]
            if value == base[key] or key == "hf_path":
                taken[key] = theirs
            elif key in _ARCHITECTURE and value != theirs:
                clashes.append(f"config.model.{key} = {value!r} (checkpoint: {theirs!r})")
        if clashes:
            raise ValueError("config.model differs from the checkpoint: " + "; ".join(clashes))
        merged.model.update_from_flattened_dict(taken)
        if config.data.tokenizer == "byte":
            merged.data.tokenizer = loaded.data.tokenizer
    return merged


def with_checkpoint(config) -> tuple[ConfigDict, dict]:
    """``(checkpoint_config(config), the checkpoint's params)``, params as host float32 numpy
    (``load``); on a mesh, use ``checkpoint_config`` and ``load_sharded`` instead."""
    merged = checkpoint_config(config)
    return merged, load(config.model.hf_path)[1]
