"""RNoPE-SWA: 3 RoPE sliding-window layers, then 1 NoPE causal layer (Yang et al. 2025).

The quickstart model with this positional scheme, for the positional experiments:

    python -m lcm.train --config configs/positional/rnope_swa.py --workdir workdir/rnope_swa
"""

from configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.model.positional.schedule = "rnope_swa"
    config.model.positional.swa_window = 128
    return config
