"""TAPA: token-aware phase attention (Wang et al. 2025).

The quickstart model with this positional scheme, for the positional experiments:

    python -m lcm.train --config configs/positional/tapa.py --workdir workdir/tapa
"""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model.positional.name = "tapa"
    return config
