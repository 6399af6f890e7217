"""``python -m lcm.train --config configs/<x>.py --workdir DIR [--config.a.b=value ...]``.

Trains (resuming from ``DIR`` when it holds checkpoints). Multi-host: run the same command on
every host; ``jax.distributed.initialize()`` is called first when ``--multihost`` is set.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lcm.train import checkpoint, health
from lcm.train.loop import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (TPU pods, multi-host GPU)."
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if _MULTIHOST.value:
        jax.distributed.initialize()
    try:
        train(_CONFIG.value, _WORKDIR.value, log=lambda s: print(s, flush=True))
    except ValueError as e:
        if str(e).startswith(("invalid config", "config.")):
            raise SystemExit(str(e)) from None
        raise
    except (checkpoint.CheckpointSaveError, health.NonFiniteError) as e:
        raise SystemExit(f"{type(e).__name__}: {e}") from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
