"""Shared test setup: 8 simulated CPU devices, markers, hypothesis profile.

XLA_FLAGS must be set before jax initializes its backend, so this runs before any jax import.
The device count is frozen once the backend starts: tests never change it, they skip when
``jax.device_count()`` is too small (e.g. when run with a different XLA_FLAGS).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# libtpu (the compile-only TPU client of the TPU compile tests) takes a lock file when loaded;
# pytest-xdist workers each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", False)
settings.register_profile("lcm", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("lcm")

# Attention vs its float32 oracle: tolerance per input dtype, relative to max(largest reference
# magnitude, 1) per compared array (assert_close). One table for every attention test.
ATTENTION_TOL = {jnp.float32: 1e-5, jnp.bfloat16: 3e-2}


def assert_close(got, want, tol, what=""):
    """``got`` within ``tol`` of ``want``, relative and absolute to ``max(|want|.max(), 1)``.

    Inputs are unit normal, so 1 is the size of the terms that cancel in a near-zero result (a
    row that sees one key has dq = 0 up to rounding of O(1) products).
    """
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(np.abs(want).max(initial=0.0), 1.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def pytest_collection_modifyitems(config, items):
    platform = jax.devices()[0].platform
    for item in items:
        if "tpu" in item.keywords and platform != "tpu":
            item.add_marker(pytest.mark.skip(reason="needs a TPU"))
        if "gpu" in item.keywords and platform != "gpu":
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))


@pytest.fixture
def devices8():
    """The 8 simulated devices; skips when fewer are available."""
    if jax.device_count() < 8:
        pytest.skip(f"needs 8 devices, have {jax.device_count()}")
    return jax.devices()[:8]


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    """Tests compile many small programs: skipping most XLA optimizations halves compile time.

    Results are checked against float32 oracles either way; only compile time changes.
    """
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
