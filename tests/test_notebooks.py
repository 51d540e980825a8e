"""The tutorial notebooks: sources in sync with their executed copies, and each runs.

Each notebook is a jupytext pair in notebooks/: `NN_name.py` (the source) and
`NN_name.ipynb` (generated from it, stored with the outputs of a full run).
Every notebook is executed top to bottom here from its `.py` source with
papermill and the parameter `SMALL = True` (tiny budgets), in a fresh kernel
of this Python, in a temporary working directory, with W&B offline. Any cell
that raises fails the test.
"""

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tensorflow_only  # tf.distribute / TF-MOT / experiments

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
papermill = pytest.importorskip("papermill")
pytest.importorskip("ipykernel")

FOLDER = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(FOLDER.glob("[0-9][0-9]_*.py"))
REGENERATE = "see notebooks/README.md to regenerate it"


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_every_source_has_its_executed_copy():
    assert len(SOURCES) >= 3, SOURCES
    assert sorted(FOLDER.glob("*.ipynb")) == [p.with_suffix(".ipynb") for p in SOURCES]


@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_stored_notebook_matches_its_source_and_has_outputs(path):
    source = jupytext.read(path)
    stored = nbformat.read(path.with_suffix(".ipynb"), as_version=4)
    assert _cells(stored) == _cells(source), f"{path.stem}.ipynb is stale; {REGENERATE}"
    outputs = [o for cell in stored.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"], path.name
    assert any("image/png" in o.get("data", {}) for o in outputs), (
        f"{path.stem}.ipynb has no plot output; {REGENERATE}")
    (params,) = [c for c in stored.cells if "parameters" in c.metadata.get("tags", [])]
    assert params.source.startswith("SMALL = False"), "stored copies are full-budget runs"


@pytest.mark.slow  # a kernel process per notebook
@pytest.mark.parametrize("path", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_executes_in_small_mode(path, tmp_path, monkeypatch):
    nb = jupytext.read(path)
    # The kernel must be this interpreter, and papermill's SMALL must have reached it.
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.prefix\nassert SMALL is True"))
    # The kernel inherits this environment.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # jupyter_client starts the "python3" kernelspec (argv "python -m
    # ipykernel_launcher ...") with sys.executable, i.e. this venv's Python.
    papermill.execute_notebook(
        nb, str(tmp_path / path.with_suffix(".ipynb").name), parameters={"SMALL": True},
        kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        execution_timeout=600,
    )
