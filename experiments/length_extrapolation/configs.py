"""One small byte-level model per positional scheme: the length-extrapolation and passkey runs.

``experiments.length_extrapolation`` and ``experiments.passkey_depth`` train these (the same
models serve both). Every scheme gets the same model size, data, seed and step budget; only
the positional fields differ. A quarter of each training batch is synthetic passkey documents
(``data.synthetic_share``; at 256 bytes passkey is the only synthetic task that fits).

    python -m lcm.train --config experiments/length_extrapolation/configs.py:alibi --workdir DIR
    python -m lcm.train --config experiments/length_extrapolation/configs.py:alibi,toy ...

``get_config("<scheme>[,<setting>]")``: the setting (``toy``, ``default``, ``full``) applies
``SETTINGS[setting]`` on top of the scheme's config.

Schemes: ``rope`` (Su et al. 2021), ``nope`` (Kazemnejad et al. 2023, arXiv:2305.19466),
``alibi`` (Press et al. 2022, arXiv:2108.12409), ``rnope_swa`` (RoPE sliding-window layers with
a NoPE full-attention layer, Yang et al. 2025, arXiv:2501.18795; here 1:1 with two layers and a
64-token window) and ``tapa`` (Wang et al. 2025).
"""

from configs import base

SCHEMES = ("rope", "nope", "alibi", "rnope_swa", "tapa")

# Per-setting overrides of every scheme's config (``--toy`` / default / ``--full``).
SETTINGS = {
    "toy": {
        "seq_len": 32,
        "model.d_model": 32,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "model.head_dim": 16,
        "model.mlp_dim": 64,
        "model.attention.block_q": 16,
        "model.attention.block_kv": 16,
        "model.positional.swa_window": 8,
        "data.batch_size": 4,
        "data.synthetic_share": 0.0,  # no synthetic task fits 32 bytes
        "train.num_steps": 2,
        "train.warmup_steps": 1,
        "train.log_every": 1,
        "train.eval_every": 0,
        "train.checkpoint_every": 2,
        "train.peak_flops": 1e9,
        "eval.lengths": (32, 64),
        "eval.num_documents": 1,
    },
    "default": {"train.peak_flops": 1e9},  # MFU is not reported; skip the matmul timing
    "full": {
        "seq_len": 512,
        "model.d_model": 512,
        "model.num_layers": 8,
        "model.num_heads": 8,
        "model.num_kv_heads": 4,
        "model.head_dim": 64,
        "model.mlp_dim": 1536,
        "model.positional.swa_window": 128,
        "model.positional.nope_every": 4,
        "data.batch_size": 32,
        "train.num_steps": 5000,
        "train.warmup_steps": 200,
        "train.log_every": 100,
        "train.eval_every": 1000,
        "train.checkpoint_every": 1000,
        "eval.lengths": (256, 512, 1024, 2048, 4096, 8192),
        "eval.num_documents": 16,
    },
}


def apply(config, overrides: dict):
    """``config`` with ``{"a.b": value}`` set in place (``seq_len`` also sets ``data.seq_len``)."""
    config.update_from_flattened_dict(overrides)
    if "seq_len" in overrides:
        config.data.seq_len = overrides["seq_len"]
    return config


def scheme_config(scheme: str):
    """The scheme's model at L = 256 (the committed default, before any setting)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme = {scheme!r}; allowed: {', '.join(SCHEMES)}")
    config = base.get_config()
    config.seq_len = 256
    config.model.d_model = 128
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 32
    config.model.mlp_dim = 384
    config.data.batch_size = 8
    config.data.synthetic_share = 0.25
    config.train.num_steps = 400
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 40
    config.train.log_every = 50
    config.train.eval_every = 400
    config.train.eval_batches = 4
    config.train.checkpoint_every = 400
    config.train.max_checkpoints = 1
    if scheme == "rnope_swa":
        config.model.positional.schedule = "rnope_swa"
        config.model.positional.nope_every = 2
        config.model.positional.swa_window = 64
    elif scheme != "rope":
        config.model.positional.name = scheme
    config.eval.lengths = (128, 256, 512, 1024, 2048, 4096)  # L/2 .. 16L
    config.eval.tasks = ("perplexity",)
    config.eval.num_documents = 4
    return config


def get_config(arg: str = "rope"):
    """``"<scheme>[,<setting>]"``: the scheme's model with the setting's overrides."""
    scheme, _, setting = arg.partition(",")
    return apply(scheme_config(scheme), SETTINGS[setting or "default"])
