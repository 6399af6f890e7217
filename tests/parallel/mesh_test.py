import jax
import pytest

from lcm.parallel import mesh as mesh_lib

AXES = ("data", "fsdp", "context", "tensor")


def _cfg(shape, axes=AXES, axis_types="auto"):
    return {"axes": axes, "shape": shape, "axis_types": axis_types}


@pytest.mark.multidevice
@pytest.mark.parametrize("axis_types", ["auto", "explicit"])
@pytest.mark.parametrize(
    "shape, want",
    [
        ((8, 1, 1, 1), (8, 1, 1, 1)),
        ((2, 1, 4, 1), (2, 1, 4, 1)),
        ((1, 2, 2, 2), (1, 2, 2, 2)),
        ((-1, 1, 4, 1), (2, 1, 4, 1)),
        ((1, 1, -1, 2), (1, 1, 4, 2)),
    ],
)
def test_mesh_shapes(devices8, shape, want, axis_types):
    mesh = mesh_lib.make_mesh(_cfg(shape, axis_types=axis_types), devices=devices8)
    assert tuple(mesh.shape.values()) == want
    assert tuple(mesh.axis_names) == AXES
    expected = mesh_lib.AXIS_TYPES[axis_types]
    assert all(t == expected for t in mesh.axis_types)
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices8)


def test_axis_order_may_differ(devices8):
    mesh = mesh_lib.make_mesh(
        _cfg((4, 2, 1, 1), axes=("context", "data", "fsdp", "tensor")), devices=devices8
    )
    assert dict(mesh.shape) == {"context": 4, "data": 2, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
    "cfg, message",
    [
        (_cfg((2, 2, 1, 1)), r"mesh.shape = \(2, 2, 1, 1\): product 4 != 8 devices available"),
        (_cfg((3, -1, 1, 1)), r"fixed sizes multiply to 3, which does not divide the 8 devices"),
        (_cfg((-1, -1, 1, 1)), r"at most one -1 is allowed, got 2"),
        (_cfg((0, 8, 1, 1)), r"sizes must be positive or -1"),
        (_cfg((8, 1, 1)), r"has 3 sizes but mesh.axes = .* has 4"),
        (
            _cfg((8, 1, 1, 1), axes=("data", "fsdp", "seq", "tensor")),
            r"unknown axis name\(s\) \['seq'\]; allowed: data, fsdp, context, tensor",
        ),
        (_cfg((8, 1, 1), axes=("data", "fsdp", "tensor")), r"missing \['context'\]"),
        (_cfg((8, 1, 1, 1), axes=("data", "data", "context", "tensor")), r"must be distinct"),
        (_cfg((8, 1, 1, 1), axis_types="manual"), r"allowed: 'auto', 'explicit'"),
    ],
)
def test_mesh_errors(devices8, cfg, message):
    with pytest.raises(ValueError, match=message):
        mesh_lib.make_mesh(cfg, devices=devices8)


def test_default_devices_fill():
    mesh = mesh_lib.make_mesh(_cfg((-1, 1, 1, 1)))
    assert mesh.shape["data"] == jax.device_count()
    assert "data=" in mesh_lib.describe(mesh)
