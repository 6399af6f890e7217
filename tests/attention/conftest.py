"""Attention tests compile many small programs: skip most XLA optimizations to halve compiles.

Results are checked against the float32 reference either way; only compile time changes.
"""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
