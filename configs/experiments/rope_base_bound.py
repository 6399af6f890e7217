"""Small RoPE models that differ only in the RoPE base, around the bound of Men et al. 2024.

"Base of RoPE Bounds Context Length" (arXiv:2405.14591): for head_dim 32 and length 512 the
smallest base with ``B(m) = Σ_i cos(m θ_i) ≥ 0`` for all ``m ≤ 512`` is about 1.25e4
(``lcm.positional.base_bound.min_base``). ``experiments/rope_base_bound.py`` trains one model
per base below and above it and compares retrieval at the training length. A quarter of each
training batch is synthetic retrieval documents (passkey, NIAH, ...; ``data.synthetic_share``).

    python -m lcm.train --config configs/experiments/rope_base_bound.py:1000 --workdir DIR
"""

from configs import base


def get_config(rope_base: str = "10000"):
    config = base.get_config()
    config.seq_len = 512
    config.model.d_model = 128
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 32
    config.model.mlp_dim = 384
    config.model.positional.base = float(rope_base)
    config.data.batch_size = 8
    config.data.synthetic_share = 0.25
    config.train.num_steps = 120
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 12
    config.train.log_every = 20
    config.train.eval_every = 120
    config.train.eval_batches = 4
    config.train.checkpoint_every = 120
    config.train.max_checkpoints = 1
    config.eval.lengths = (512,)
    config.eval.tasks = ("perplexity", "passkey", "niah_single_1")
    config.eval.depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.eval.samples_per_cell = 4
    config.eval.num_documents = 4
    return config
