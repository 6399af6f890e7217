"""NoPE: no positional encoding (Kazemnejad et al. 2023, arXiv:2305.19466).

The quickstart model with this positional scheme, for the positional experiments:

    python -m lcm.train --config configs/positional/nope.py --workdir workdir/nope
"""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model.positional.name = "nope"
    return config
