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
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", False)
settings.register_profile("lcm", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("lcm")


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
