"""ABF: RoPE with a 10x larger base (Xiong et al. 2023, arXiv:2309.16039).

The quickstart model with this positional scheme, for the positional experiments:

    python -m lcm.train --config configs/positional/rope_abf.py --workdir workdir/rope_abf
"""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model.positional.base = 100_000.0
    return config
