"""The colab/ notebooks: committed without outputs, and each one runs top to bottom.

Execution uses nbclient with the ``python3`` kernel, which jupyter_client starts with this
interpreter (``sys.executable``, the venv's python), with the repository root as working
directory, so the notebooks import this checkout's ``lcm``. ``LCM_NOTEBOOK_FAST=1`` shrinks every
notebook for the default (fast) run; the @slow variant runs them at full size. Kernels start
without ``XLA_FLAGS``, as on a fresh Colab runtime: notebook 02 asks for its own 8 simulated
devices, and the others run on one CPU device (faster than the 8 of ``tests/conftest.py``).
"""

import pathlib
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
EXPECTED = [
    "01_positional_schemes.ipynb",
    "02_attention_masks_and_kernels.ipynb",
    "03_train_and_evaluate.ipynb",
]


def test_the_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped(path):
    """Every code cell has no outputs and no execution count."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_installs_in_colab_and_reads_fast(path):
    nb = nbformat.read(path, as_version=4)
    first = next(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "REPO_URL = " in first
    assert 'if "google.colab" in sys.modules:' in first
    assert "%pip install" in first
    assert 'FAST = os.environ.get("LCM_NOTEBOOK_FAST", "0") == "1"' in first


def _kernel_runs_this_python():
    """The python3 kernelspec must start this interpreter (nbclient would run another else)."""
    argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
    # jupyter_client replaces a bare "python"/"python3"/"python3.X" by sys.executable.
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    this = pathlib.Path(sys.executable).resolve()
    assert argv0 in bare or pathlib.Path(argv0).resolve() == this, (
        f"the python3 kernelspec runs {argv0!r}, not {sys.executable}"
    )


def _execute(path, fast: bool, monkeypatch, tmp_path) -> None:
    _kernel_runs_this_python()
    monkeypatch.setenv("LCM_NOTEBOOK_FAST", "1" if fast else "0")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # notebook 03's workdir lands under tmp_path
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=600 if fast else 3600,  # seconds per cell; full size trains for minutes
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_fast(path, monkeypatch, tmp_path):
    _execute(path, True, monkeypatch, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_full_size(path, monkeypatch, tmp_path):
    _execute(path, False, monkeypatch, tmp_path)
