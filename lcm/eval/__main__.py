"""``python -m lcm.eval --config configs/<x>.py --workdir DIR [--config.a.b=value ...]``.

Evaluates the newest checkpoint in ``DIR`` (or a random init with ``--config.eval.init=random``)
on ``config.eval.tasks`` and writes ``DIR/eval/[<label>/]results.json`` and PNG plots. A
training-free extension is an override, e.g. ``--config.model.positional.rope_scaling.rope_type=
yarn --config.model.positional.rope_scaling.factor=4 --config.eval.label=yarn4``.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from lcm.eval.runner import evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding checkpoints; gets eval/.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        evaluate(_CONFIG.value, _WORKDIR.value, log=lambda s: print(s, flush=True))
    except ValueError as e:
        if str(e).startswith(("invalid config", "config.")):
            raise SystemExit(str(e)) from None
        raise


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
