"""The package layering: lower packages never import higher ones.

From the bottom: ``kernels_pallas`` (no lcm), then ``lcm.registry`` / ``lcm.checks``,
``lcm.parallel``, ``lcm.attention`` / ``lcm.positional``, ``lcm.model``, then ``lcm.data``,
``lcm.inference``, ``lcm.train`` and ``lcm.eval``. ``lcm.config`` sits above the model (its
``validate`` builds a ``ModelSpec``); only the entry points in ``CONFIG_USERS`` load configs.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Modules that may import lcm.config: the CLIs and runs that load configs (train, eval, compile,
# generate) and the Hugging Face interop, which builds whole lcm configs from configs/base.py.
CONFIG_USERS = {
    "lcm.compile.aot",
    "lcm.eval.runner",
    "lcm.generate",
    "lcm.hf.mapping",
    "lcm.hf.merge",
    "lcm.train.loop",
}
# What each lower package may not import (a prefix matches the package and its modules).
FORBIDDEN = {
    "lcm.model": ("lcm.config", "lcm.train", "lcm.data", "lcm.inference", "lcm.eval", "lcm.hf"),
    "lcm.attention": ("lcm.config", "lcm.model", "lcm.train", "lcm.data", "lcm.inference"),
    "lcm.positional": ("lcm.config", "lcm.model", "lcm.train", "lcm.data", "lcm.inference"),
    "lcm.parallel": ("lcm.config", "lcm.model", "lcm.attention", "lcm.train", "lcm.data"),
    "lcm.checks": ("lcm.",),
    "lcm.registry": ("lcm.",),
    "kernels_pallas": ("lcm",),
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _sources(package: str) -> list[pathlib.Path]:
    root = REPO_ROOT.joinpath(*package.split("."))
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


def _matches(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix.rstrip(".") + ".")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_do_not_import_higher_ones(package):
    bad = sorted(
        f"{_module_name(path)} imports {name}"
        for path in _sources(package)
        for name in _imports(path)
        if any(_matches(name, prefix) for prefix in FORBIDDEN[package])
    )
    assert not bad, "\n".join(bad)


def test_only_entry_points_import_lcm_config():
    users = {
        _module_name(path)
        for path in _sources("lcm")
        if any(_matches(name, "lcm.config") for name in _imports(path))
    }
    assert users - {"lcm.config"} <= CONFIG_USERS, sorted(users - CONFIG_USERS - {"lcm.config"})


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        timeout=300,
    ).stdout
    return set(out.split())


def test_importing_the_model_loads_no_config_data_train_or_inference():
    loaded = _loaded_after("import lcm.model")
    assert "lcm.model.transformer" in loaded  # the import really happened
    upward = ("lcm.train", "lcm.data", "lcm.inference", "lcm.config", "lcm.eval", "grain")
    bad = sorted(name for name in loaded if any(_matches(name, p) for p in upward))
    assert not bad, bad


def test_importing_lcm_config_loads_no_entry_point():
    loaded = _loaded_after("import lcm.config")
    assert "lcm.model.checks" in loaded
    bad = sorted((CONFIG_USERS | {"lcm.hf"}) & loaded)
    assert not bad, bad


def test_importing_the_kernels_loads_no_lcm():
    loaded = _loaded_after("import kernels_pallas.flash, kernels_pallas.block_sparse")
    assert "kernels_pallas.flash.kernel" in loaded
    assert not sorted(name for name in loaded if _matches(name, "lcm")), loaded
