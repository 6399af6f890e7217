"""TPU compiles here run with every XLA optimization: memory figures (temporaries) and
collective schedules are only meaningful for the program a real run would get."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():  # overrides tests/conftest.py's
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
