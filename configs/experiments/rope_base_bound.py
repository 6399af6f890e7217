"""Small RoPE models that differ only in the RoPE base, around the bound of Men et al. 2024.

"Base of RoPE Bounds Context Length" (arXiv:2405.14591): for head_dim 32 and length 256 the
smallest base with ``B(m) = Σ_i cos(m θ_i) ≥ 0`` for all ``m ≤ 256`` is about 2.2e3
(``lcm.positional.base_bound.min_base``). ``experiments/rope_base_bound.py`` trains one model
per base below and above it and compares perplexity and retrieval at the training length. A
quarter of each language-model batch is synthetic passkey documents (``data.synthetic_share``).

    python -m lcm.train --config configs/experiments/rope_base_bound.py:100 --workdir DIR
"""

from configs.experiments import positional_schemes


def get_config(rope_base: str = "10000"):
    """The ``rope`` model of ``positional_schemes`` (L = 256) with RoPE base ``rope_base``."""
    config = positional_schemes.get_config("rope")
    config.model.positional.base = float(rope_base)
    config.eval.lengths = (config.seq_len,)
    config.eval.tasks = ("perplexity", "passkey")
    config.eval.depths = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.eval.samples_per_cell = 4
    return config
