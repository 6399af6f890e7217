"""One small byte-level model per positional scheme: the length-extrapolation and passkey runs.

``experiments/length_extrapolation.py`` and ``experiments/passkey_depth.py`` train these (the
same models serve both). Every scheme gets the same model size, data, seed and step budget; only
the positional fields differ. A quarter of each training batch is synthetic passkey documents
(``data.synthetic_share``; at 256 bytes passkey is the only synthetic task that fits).

    python -m lcm.train --config configs/experiments/positional_schemes.py:alibi --workdir DIR

Schemes: ``rope`` (Su et al. 2021), ``nope`` (Kazemnejad et al. 2023, arXiv:2305.19466),
``alibi`` (Press et al. 2022, arXiv:2108.12409), ``rnope_swa`` (RoPE sliding-window layers with
a NoPE full-attention layer, Yang et al. 2025, arXiv:2501.18795; here 1:1 with two layers and a
64-token window) and ``tapa`` (Wang et al. 2025).
"""

from configs import base

SCHEMES = ("rope", "nope", "alibi", "rnope_swa", "tapa")


def get_config(scheme: str = "rope"):
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
