"""Small RoPE models that differ only in the RoPE base, around the bound of Men et al. 2024.

"Base of RoPE Bounds Context Length" (arXiv:2405.14591): for head_dim 32 and length 256 the
smallest base with ``B(m) = Σ_i cos(m θ_i) ≥ 0`` for all ``m ≤ 256`` is about 2.2e3
(``lcm.positional.base_bound.min_base``). ``experiments.rope_base_bound`` trains one model per
base below and above it and compares perplexity and retrieval at the training length. A quarter
of each language-model batch is synthetic passkey documents (``data.synthetic_share``).

    python -m lcm.train --config experiments/rope_base_bound/configs.py:100 --workdir DIR

``get_config("<base>[,<setting>]")``: the setting (``toy``, ``default``, ``full``) applies
``SETTINGS[setting]``; the retrieval models train ``STEPS[setting]`` steps with ``TUNE[setting]``
on top (``common.retrieval_train``).
"""

from experiments.length_extrapolation import configs as positional

SETTINGS = {  # per setting: overrides of every base's config
    "toy": {
        "seq_len": 256,
        "model.d_model": 32,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "model.head_dim": 16,
        "model.mlp_dim": 64,
        "data.batch_size": 4,
        "train.num_steps": 2,
        "train.warmup_steps": 1,
        "train.log_every": 1,
        "train.eval_every": 0,
        "train.checkpoint_every": 2,
        "train.peak_flops": 1e9,
        "eval.lengths": (256,),
        "eval.depths": (0.0, 1.0),
        "eval.samples_per_cell": 1,
        "eval.num_documents": 1,
    },
    "default": {"train.peak_flops": 1e9},  # MFU is not reported; skip the matmul timing
    "full": {
        "seq_len": 1024,
        "eval.lengths": (1024,),
        "model.d_model": 512,
        "model.num_layers": 8,
        "model.num_heads": 8,
        "model.num_kv_heads": 4,
        "data.batch_size": 32,
        "train.num_steps": 5000,
        "train.warmup_steps": 200,
        "train.log_every": 100,
        "train.eval_every": 1000,
        "train.checkpoint_every": 1000,
        "eval.samples_per_cell": 20,
        "eval.num_documents": 16,
    },
}
STEPS = {"toy": 2, "default": 600, "full": 2000}  # retrieval training steps per setting
TUNE = {  # per setting: the retrieval models' rows per batch
    "toy": {"data.batch_size": 4},
    "default": {"data.batch_size": 16},
    "full": {"data.batch_size": 32},
}


def get_config(arg: str = "10000"):
    """``"<base>[,<setting>]"``: the ``rope`` model of ``length_extrapolation`` (L = 256) with
    RoPE base ``base``, scored on perplexity and passkey at L."""
    rope_base, _, setting = arg.partition(",")
    config = positional.scheme_config("rope")
    config.model.positional.base = float(rope_base)
    config.eval.lengths = (config.seq_len,)
    config.eval.tasks = ("perplexity", "passkey")
    config.eval.depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.eval.samples_per_cell = 4
    return positional.apply(config, SETTINGS[setting or "default"])
