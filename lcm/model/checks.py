"""``config.model`` checks: sizes, norms, dtypes, remat, and the spec the model is built from.

``check_config`` checks the model's own fields (its blocks ``positional`` and ``attention``
are checked by ``lcm.positional.checks`` and ``lcm.attention.checks``); ``check_spec`` then
builds the ``ModelSpec``, whose errors are the scheme x attention-implementation rules, and
runs only once every model field is valid.
"""

from __future__ import annotations

import pathlib

from lcm import checks
from lcm.model import layers, spec, transformer

M = "model."


def check_config(e: checks.Errors) -> None:
    e.positive_int(*(M + k for k in ("vocab_size", "d_model", "num_layers", "num_heads",
                                     "num_kv_heads", "head_dim", "mlp_dim")))  # fmt: skip
    heads, kv_heads = e.get(M + "num_heads"), e.get(M + "num_kv_heads")
    if checks.is_positive_int(heads) and checks.is_positive_int(kv_heads) and heads % kv_heads:
        e.fail(M + "num_heads", f"must be a multiple of model.num_kv_heads = {kv_heads}")
    e.check(M + "head_dim", lambda v: v % 2 == 0, "must be even (RoPE rotates pairs)")
    e.one_of(M + "norm", layers.NORMS)
    e.positive(M + "norm_eps", M + "logit_scale")
    e.check(
        M + "hf_path",
        lambda v: v is None or (pathlib.Path(v) / "config.json").is_file(),
        "must be None or a directory holding a Hugging Face config.json",
    )
    e.one_of(M + "dtype", spec.DTYPES)
    e.one_of(M + "param_dtype", spec.DTYPES)
    e.one_of(M + "remat_policy", transformer.REMAT_POLICIES)
    e.check(
        M + "loss_chunk",
        checks.is_non_negative_int,
        "must be an integer >= 0 (positions per loss chunk; 0 = full logits)",
    )


def check_spec(e: checks.Errors) -> None:
    """``build_spec``'s errors: every layer's scheme and mask against the implementation."""
    try:
        spec.build_spec(e.config)
    except ValueError as err:
        line = str(err)
        if line.startswith("config."):  # build_spec named the key
            e.add(line)
        else:
            e.fail(M + "attention.impl", line)
