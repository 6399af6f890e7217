"""Experiment scripts are run as ``python experiments/<name>.py``: import them the same way."""

import sys

from lcm import config as config_lib

EXPERIMENTS = str(config_lib.REPO_ROOT / "experiments")
if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)
