"""The retrieval models of the passkey study: each positional scheme's model, trained on passkey.

The architecture of ``experiments/length_extrapolation/configs.py`` (same scheme, same
setting), with the retrieval training's batch (``TUNE``) and the passkey grid it is scored on
(``EVAL``); ``STEPS`` retrieval steps per setting (``common.retrieval_train`` sets the rest:
every row a passkey document, loss on the answer alone).

    python -m lcm.eval --config experiments/passkey_depth/configs.py:alibi --workdir DIR

``get_config("<scheme>[,<setting>]")``, setting ``toy``, ``default`` or ``full``.
"""

from experiments.length_extrapolation import configs as positional

STEPS = {"toy": 2, "default": 600, "full": 2000}  # retrieval training steps per setting
TUNE = {  # per setting: the retrieval training's rows per batch (and length)
    "toy": {"data.batch_size": 2, "seq_len": 256},  # passkey needs ~250 bytes
    "default": {"data.batch_size": 16},
    "full": {"data.batch_size": 32},
}
EVAL = {  # per setting: the passkey grid
    "toy": {"eval.lengths": (256,), "eval.depths": (0.0, 1.0), "eval.samples_per_cell": 1},
    "default": {
        "eval.lengths": (256, 512, 1024, 2048),
        "eval.depths": (0.0, 0.25, 0.5, 0.75, 1.0),
        "eval.samples_per_cell": 2,
    },
    "full": {
        "eval.lengths": (512, 1024, 2048, 4096, 8192),
        "eval.depths": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        "eval.samples_per_cell": 10,
    },
}


def get_config(arg: str = "rope"):
    """``"<scheme>[,<setting>]"``: the scheme's retrieval model and its passkey grid."""
    scheme, _, setting = arg.partition(",")
    setting = setting or "default"
    config = positional.get_config(f"{scheme},{setting}")
    positional.apply(config, TUNE[setting])
    return positional.apply(config, {**EVAL[setting], "eval.tasks": ("passkey",)})
