"""Every notebook, executed top to bottom on a real kernel (nbclient) against the committed runs."""

import re
import time
from pathlib import Path

import nbformat
import pytest

from prefstudy.paths import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
COMMITTED = REPO / "reports" / "runs"
SLOW = {"01_tour", "06_audit_your_data"}  # load the real model
DRAWS = re.compile(r"\bplots\.(?!set_style|label_palette|save)\w+\(")  # a cell that draws
WIDGET = "application/vnd.jupyter.widget-view+json"


def _param(path: Path):
    marks = [pytest.mark.slow] if path.stem in SLOW else []
    return pytest.param(path, marks=marks, id=path.stem)


def test_the_notebooks_are_numbered_thin_and_committed_without_outputs():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_tour", "02_length_variance", "03_collapse", "04_normalizations",
                     "05_explorer", "06_audit_your_data"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3", path.name
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert code[0].source.startswith("RERUN = False"), f"{path.name}: the switch comes first"
        assert notebook.cells[0].cell_type == "markdown", path.name
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: commit notebooks without outputs")
            assert len(cell.source.splitlines()) <= 15, f"{path.name}: keep cells short"
            assert not re.search(r"^\s*(def|class) ", cell.source, re.M), (
                f"{path.name}: logic belongs in the package")


@pytest.mark.skipif(not any(COMMITTED.glob("*/meta.json")),
                    reason="no committed runs in reports/runs (`make study` trains them)")
@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.delenv("PREFSTUDY_RUNS", raising=False)  # the kernel reads the committed runs
    notebook = nbformat.read(path, as_version=4)
    started = time.time()
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.time() - started
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        kinds = {key for out in cell.outputs for key in out.get("data", {})}
        assert not [o for o in cell.outputs if o.output_type == "error"], (path.name, i)
        assert not any(o.get("name") == "stderr" and "Traceback" in o.get("text", "")
                       for o in cell.outputs), (path.name, i)
        if DRAWS.search(cell.source):  # every figure a cell draws is shown
            assert "image/png" in kinds, f"{path.name} cell {i} drew no figure:\n{cell.source}"
    if path.stem == "05_explorer":
        widgets = [c for c in notebook.cells if c.cell_type == "code"
                   and any(WIDGET in o.get("data", {}) for o in c.outputs)]
        assert len(widgets) == 2  # the explorer and the what-if view
    assert elapsed < 300, f"{path.name} took {elapsed:.0f} s"
