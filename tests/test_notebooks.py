"""The notebooks install fpjax only from a source they name, never from the bare package name."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_names_its_source_and_has_no_fallback(path):
    code = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    installs = [c for c in code if "pip" in c and "install" in c]
    assert len(installs) == 1, f"{path.name}: expected one install cell"
    cell = installs[0]
    assert "FPJAX_SOURCE = " in cell and "find_spec('fpjax') is None" in cell
    assert "'-q', 'fpjax'" not in cell and "'FPJAX_SOURCE', 'fpjax'" not in cell, "falls back to the bare name"
    assert "raise RuntimeError" in cell  # with neither an install nor a source: say what to set
