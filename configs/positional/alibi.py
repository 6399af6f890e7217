"""ALiBi: per-head linear distance biases (Press et al. 2022, arXiv:2108.12409).

The quickstart model with this positional scheme, for the positional experiments:

    python -m lcm.train --config configs/positional/alibi.py --workdir workdir/alibi
"""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model.positional.name = "alibi"
    return config
