"""``make run``: the main job on the embedded default config.

Until the training loop lands this runs the quickest real thing lcm can do end to end: load and
validate the config, build the device mesh, and run one jitted computation sharded by logical
axis names over that mesh, checking its result against numpy.

    python -m lcm.main --config configs/base.py [--config.a.b=value ...]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lcm import config as config_lib
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)


def run(config) -> float:
    """Validates ``config``, builds its mesh and runs a sharded embedding-mean; returns the mean."""
    config_lib.validate(config, num_devices=jax.device_count())
    mesh = mesh_lib.make_mesh(config.mesh)
    print(f"mesh: {mesh_lib.describe(mesh)}", flush=True)
    rules = sharding.validate_rules(config.mesh.rules, config.mesh.axes)
    batch, length, width = config.data.batch_size, config.seq_len, config.model.d_model
    tokens = np.random.default_rng(config.train.seed).integers(
        0, config.model.vocab_size, (batch, length)
    )
    table = np.random.default_rng(config.train.seed + 1).standard_normal(
        (config.model.vocab_size, width), dtype=np.float32
    )

    @jax.jit
    def embed_mean(tokens, table):
        x = sharding.constrain(table[tokens], ("batch", "length", "embed"))
        return jnp.mean(x, axis=(1, 2))

    with sharding.use_mesh(mesh, rules):
        tokens = jax.device_put(tokens, sharding.named_sharding(mesh, ("batch", "length"), rules))
        start = time.perf_counter()
        out = np.asarray(embed_mean(tokens, table))
    expected = table[np.asarray(tokens)].mean(axis=(1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    print(
        f"sharded embedding mean over [B={batch}, T={length}, D={width}] matches numpy "
        f"({time.perf_counter() - start:.2f}s incl. compile)",
        flush=True,
    )
    return float(out.mean())


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        run(_CONFIG.value)
    except ValueError as e:  # invalid config: the message names every bad key
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
