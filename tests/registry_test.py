import pytest

from lcm.registry import Registry


def _registry():
    reg = Registry("widget")

    @reg.register("square", "sq")
    def square(x, *, offset=0):
        return x * x + offset

    @reg.register("cube")
    def cube(x):
        return x**3

    return reg


def test_register_get_names_and_alias():
    reg = _registry()
    assert reg.names() == ["cube", "sq", "square"]
    assert reg.get("square")(3) == 9
    assert reg.get("sq") is reg.get("square")
    assert "cube" in reg and "nope" not in reg


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match=r"unknown widget 'tri'; valid names: cube, sq, square"):
        _registry().get("tri")


def test_duplicate_name_rejected():
    reg = _registry()
    with pytest.raises(ValueError, match="'cube' is already registered"):
        reg.register("cube")(lambda x: x)


def test_build_passes_fields_as_kwargs():
    reg = Registry("maker")
    reg.register("pair")(lambda a, b=0: (a, b))
    assert reg.build({"name": "pair", "a": 1, "b": 2}) == (1, 2)
    assert reg.build({"name": "pair"}, a=5) == (5, 0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        reg.build({"name": "pair", "a": 1, "c": 3})
    with pytest.raises(KeyError, match="needs a 'name' field"):
        reg.build({"a": 1})
