"""Einsum specs in lcm and kernels_pallas use the upper-case dimension letters of the style guide
(B batch, T query length, S key/value length, N / K heads, G = N/K, H head_dim, ...)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _einsum_specs(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "einsum"
            and node.args
        ):
            yield node.lineno, node.args[0]


def test_einsum_specs_are_upper_case_literals():
    specs, bad = 0, []
    for package in ("lcm", "kernels_pallas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, spec in _einsum_specs(path):
                specs += 1
                literal = isinstance(spec, ast.Constant) and isinstance(spec.value, str)
                if not literal or spec.value != spec.value.upper():
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {ast.unparse(spec)}")
    assert specs >= 40  # the scan finds the model's and the attention code's einsums
    assert not bad, "einsum specs not written as upper-case literals:\n" + "\n".join(bad)
