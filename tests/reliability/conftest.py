"""Shared setup for the reliability tests: a small text corpus and the tiny config reading it."""

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lcm import config as config_lib

TINY = str(config_lib.REPO_ROOT / "configs" / "tiny.py")


def write_corpus(directory, documents: int = 24, seed: int = 0):
    """Writes ``documents`` files of lowercase words (a few hundred bytes each)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    for i in range(documents):
        text = " ".join(rng.choice(words, size=int(rng.integers(40, 120))))
        (directory / f"doc{i:02d}.txt").write_text(text + "\n")
    return directory


def overrides(tmp_path) -> dict[str, object]:
    """Flat ``key: value`` overrides that make configs/tiny.py fast and self-contained."""
    corpus = write_corpus(tmp_path / "corpus")
    return {
        "data.corpus": "text",
        "data.path": str(corpus),
        "data.cache_dir": str(tmp_path / "token_cache"),
        "train.eval_every": 0,
        "train.peak_flops": 1e12,
        "train.log_every": 1,
    }


def tiny_config(tmp_path, **more):
    """configs/tiny.py with ``overrides(tmp_path)`` and ``more`` (``a__b=v`` sets ``a.b``)."""
    config = config_lib.load_config(TINY)
    settings = {**overrides(tmp_path), **{k.replace("__", "."): v for k, v in more.items()}}
    config.update_from_flattened_dict(settings)
    return config


@pytest.fixture
def tiny_overrides(tmp_path):
    """``overrides(tmp_path)``: the corpus is written once per test."""
    return overrides(tmp_path)


@pytest.fixture
def tiny(tmp_path):
    """``fn(**more) -> config``: see ``tiny_config``."""
    return lambda **more: tiny_config(tmp_path, **more)


def read_saved_state(workdir, step: int) -> dict:
    """The train state of ``workdir/checkpoints/<step>`` as numpy arrays (read as saved)."""
    path = pathlib.Path(workdir, "checkpoints", str(step), "state").resolve()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as reader:
        # Onto one device, whatever topology wrote it (e.g. two processes).
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
            reader.metadata(path).item_metadata.tree,
        )
        return jax.device_get(reader.restore(path, target))


@pytest.fixture
def saved_state():
    """``fn(workdir, step) -> state``: see ``read_saved_state``."""
    return read_saved_state
