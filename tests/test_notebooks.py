"""The example notebooks execute headlessly, top to bottom, without errors."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.ipynb")))
def test_notebook_executes(name, tmp_path):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name == "quickstart.ipynb":
        widget_views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widget_views, "the quickstart should display the Inspector widget"
        printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "64 image tokens on a 8×8 grid" in printed and "attention map shape: (" in printed
        assert "the model answers: 'purple'" in printed
