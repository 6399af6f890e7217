"""``config.train.init_from``: a fresh run starts from another workdir's newest weights."""

import jax
import numpy as np
import pytest

from lcm import config as config_lib
from lcm.train import loop

TINY = str(config_lib.REPO_ROOT / "configs" / "tiny.py")


def _tiny(**train):
    config = config_lib.load_config(TINY)
    config.train.peak_flops = 1e9  # skip the start-up matmul timing
    for key, value in train.items():
        config.train[key] = value
    return config


@pytest.mark.slow  # three short training runs
def test_init_from_copies_params_and_restarts_the_optimizer(tmp_path):
    quiet = dict(log=lambda s: None)
    source = loop.train(_tiny(num_steps=3, eval_every=0), str(tmp_path / "a"), **quiet)
    # One step at a negligible learning rate: the weights stay the source's to ~1e-12.
    config = _tiny(num_steps=1, eval_every=0, warmup_steps=0, learning_rate=1e-12)
    config.train.init_from = str(tmp_path / "a")
    out = loop.train(config, str(tmp_path / "b"), **quiet)
    assert int(out["state"].step) == 1  # the optimizer restarted at step 0
    for a, b in zip(
        jax.tree.leaves(source["state"].params), jax.tree.leaves(out["state"].params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-9)
    # The same step from random init lands elsewhere: the copy is not the seed's init.
    config.train.init_from = None
    fresh = loop.train(config, str(tmp_path / "c"), **quiet)
    diffs = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree.leaves(source["state"].params),
            jax.tree.leaves(fresh["state"].params),
            strict=True,
        )
    ]
    assert max(diffs) > 1e-3


def test_init_from_without_checkpoints_fails_naming_the_field(tmp_path):
    config = _tiny(num_steps=1, eval_every=0)
    config.train.init_from = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"config.train.init_from = .*no checkpoints/ directory"):
        loop.train(config, str(tmp_path / "b"), log=lambda s: None)


def test_init_from_is_validated():
    config = config_lib.base_config()
    config.unlock()
    config.train.init_from = ""
    config.model.hf_path = "/some/hf/dir"
    with pytest.raises(ValueError) as err:
        config_lib.validate(config)
    assert "config.train.init_from = '': must be a workdir path or None" in str(err.value)
    assert (
        "config.model.hf_path = '/some/hf/dir': must be None when train.init_from is set "
        "(both give the initial weights)" in str(err.value)
    )
