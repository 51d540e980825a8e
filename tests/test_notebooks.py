"""Executes every tutorial notebook in notebooks/ with a small budget.

Each notebook runs top to bottom in a fresh kernel (this Python, so this
environment's dst, Keras and TF-MOT), in a temporary working directory, with
`DST_NOTEBOOK_SMALL=1` (tiny epochs) and `WANDB_MODE=offline`. Any cell that
raises fails the test.
"""

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tensorflow_only  # tf.distribute / TF-MOT / experiments

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{path.name} is stored with outputs; rebuild it with notebooks/_build.py"
    )
    # The kernel must be this interpreter: check it in an extra last cell.
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.prefix"))
    # The kernel inherits this environment.
    monkeypatch.setenv("DST_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # jupyter_client starts the "python3" kernelspec (argv "python -m
    # ipykernel_launcher ...") with sys.executable, i.e. this venv's Python.
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
