"""Small RoPE models that differ only in the RoPE base, around the bound of Men et al. 2024.

"Base of RoPE Bounds Context Length" (arXiv:2405.14591): for head_dim 32 and length 512 the
smallest base with ``B(m) = Σ_i cos(m θ_i) ≥ 0`` for all ``m ≤ 512`` is about 1.25e4
(``lcm.positional.base_bound.min_base``). ``experiments/rope_base_bound.py`` trains one model
per base below and above it and compares retrieval at the training length. A quarter of each
training batch is synthetic retrieval documents (passkey, NIAH, ...; ``data.synthetic_share``).

    python -m lcm.train --config configs/experiments/rope_base_bound.py:1000 --workdir DIR
"""

from configs.experiments import positional_schemes


def get_config(rope_base: str = "10000"):
    """The ``rope`` model of ``positional_schemes`` at length 512 with RoPE base ``rope_base``."""
    config = positional_schemes.get_config("rope")
    config.seq_len = 512
    config.model.positional.base = float(rope_base)
    config.eval.lengths = (512,)
    config.eval.tasks = ("perplexity", "passkey", "niah_single_1")
    config.eval.depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.eval.samples_per_cell = 4
    return config
