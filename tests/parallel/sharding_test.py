import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lcm import config as config_lib
from lcm.parallel import mesh as mesh_lib
from lcm.parallel import sharding


def test_default_rules_match_base_config():
    base = config_lib.base_config()
    assert sharding.validate_rules(base.mesh.rules, base.mesh.axes) == sharding.validate_rules(
        sharding.DEFAULT_RULES, base.mesh.axes
    )


def test_logical_spec():
    # A mesh axis shards at most one dimension: batch already took fsdp, so embed stays whole.
    assert sharding.logical_spec(("batch", "length", "embed")) == P(
        ("data", "fsdp"), "context", None
    )
    assert sharding.logical_spec(("embed", "heads", "head_dim")) == P(
        ("fsdp", "context"), "tensor", None
    )
    # An activation's embed dim yields its axes to batch and length.
    assert sharding.logical_spec(("batch", "length", "embed")) == P(
        ("data", "fsdp"), "context", None
    )
    assert sharding.logical_spec(("vocab", None)) == P("tensor", None)


@pytest.mark.parametrize(
    "rules, message",
    [
        ((("tokens", "data"),), r"unknown logical axis 'tokens'; allowed: batch, length"),
        ((("batch", ("data", "seq")),), r"unknown mesh axis \['seq'\]; allowed: data, fsdp"),
        ((("batch",),), r"expected \(logical_name, mesh_axes\)"),
    ],
)
def test_bad_rules(rules, message):
    with pytest.raises(ValueError, match=message):
        sharding.validate_rules(rules, mesh_lib.MESH_AXES)


@pytest.mark.multidevice
@pytest.mark.parametrize("axis_types", ["auto", "explicit"])
@pytest.mark.parametrize("shape", [(8, 1, 1, 1), (2, 1, 4, 1), (1, 2, 2, 2)])
def test_constrain_and_named_sharding_on_both_axis_types(devices8, shape, axis_types):
    mesh = mesh_lib.make_mesh(
        {"axes": mesh_lib.MESH_AXES, "shape": shape, "axis_types": axis_types}, devices=devices8
    )
    x = np.arange(8 * 16 * 4, dtype=np.float32).reshape(8, 16, 4)

    @jax.jit
    def f(x):
        y = sharding.constrain(x * 2.0, ("batch", "length", None))
        return sharding.constrain(y.sum(-1), ("batch", "length"))

    with sharding.use_mesh(mesh):
        xs = jax.device_put(x, sharding.named_sharding(mesh, ("batch", None, None)))
        out = f(xs)
    np.testing.assert_array_equal(np.asarray(out), (x * 2).sum(-1))
    want = sharding.named_sharding(mesh, ("batch", "length"))
    assert out.sharding.is_equivalent_to(want, 2)


def test_constrain_outside_mesh_is_identity():
    x = jnp.ones((2, 3))
    assert sharding.constrain(x, ("batch", "embed")) is x
