"""``python -m lcm.generate --config configs/<x>.py --workdir DIR --prompt-file F``.

Continues the text in ``F`` with the model of the newest readable checkpoint in ``DIR`` (as
``python -m lcm.eval`` restores it; ``--config.eval.init=random`` for an untrained model,
``--config.model.hf_path`` for Hugging Face weights) and prints the continuation. Decoding and
sampling follow ``config.inference`` (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``,
``cache_policy``, ``budget``, ...), e.g. ``--config.inference.cache_policy=h2o
--config.inference.budget=512``.
"""

from __future__ import annotations

import pathlib

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lcm import config as config_lib
from lcm import hf, inference
from lcm import model as model_lib
from lcm.data.tokenizers import load_tokenizer
from lcm.eval import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding checkpoints.")
_PROMPT_FILE = flags.DEFINE_string("prompt-file", None, "UTF-8 text file holding the prompt.")


def run(config, workdir: str, prompt_file: str) -> str:
    """Returns the decoded continuation of ``prompt_file``'s text."""
    config_lib.validate(config)
    path = pathlib.Path(prompt_file)
    if not path.is_file():
        raise ValueError(f"--prompt-file = {prompt_file!r}: no such file")
    hf_params = None
    if config.model.hf_path is not None:
        config, hf_params = hf.with_checkpoint(config)
    model = model_lib.Transformer(model_lib.build_spec(config))
    params, _ = runner.load_params(config, workdir, model, hf_params)
    tokenizer = load_tokenizer(config.data.tokenizer)
    prompt = np.asarray(tokenizer.encode(path.read_text()), np.int32)
    if prompt.size == 0:
        raise ValueError(f"--prompt-file = {prompt_file!r}: the prompt is empty")
    out = inference.generate(params, config, prompt, max_new_tokens=config.inference.max_new_tokens)
    return tokenizer.decode(out)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        print(run(_CONFIG.value, _WORKDIR.value, _PROMPT_FILE.value), flush=True)
    except ValueError as e:
        if str(e).startswith(("invalid config", "config.", "--prompt-file")):
            raise SystemExit(str(e)) from None
        raise


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir", "prompt-file"])
    app.run(main)
