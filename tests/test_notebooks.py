"""The committed notebooks are what their generators (scripts/make_notebook_0N.py) write today, and their install
cell installs fpjax only from the source it is given, never from the bare package name."""

import importlib.util
import json
import pathlib
import runpy
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
_FIND_SPEC = importlib.util.find_spec


def _cells(path):
    """``[(cell type, source)]`` of a notebook file: what a reader sees, without ids, outputs or counts."""
    return [(c["cell_type"], "".join(c["source"])) for c in json.loads(pathlib.Path(path).read_text())["cells"]]


def _install_cell(path) -> str:
    code = [source for kind, source in _cells(path) if kind == "code"]
    installs = [source for source in code if "FPJAX_SOURCE" in source]
    assert len(installs) == 1, f"{path.name}: expected one install cell"
    return installs[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_what_its_generator_writes(path, tmp_path, monkeypatch):
    """Run scripts/make_notebook_0N.py with its output folder sent to ``tmp_path``; the committed notebook must
    hold the same cells (a notebook edited by hand, or a generator changed without regenerating, fails)."""
    pytest.importorskip("nbformat")
    generator = ROOT / "scripts" / f"make_notebook_{path.name[:2]}.py"
    assert generator.exists(), f"{path.name} has no generator {generator.name}"
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import notebook_cells

    monkeypatch.setattr(notebook_cells, "NOTEBOOKS", tmp_path)
    runpy.run_path(str(generator), run_name="__main__")
    written = tmp_path / path.name
    assert written.exists(), f"{generator.name} did not write {path.name}"
    assert _cells(path) == _cells(written), f"{path.name} differs from what {generator.name} writes: regenerate it"
    assert not any(c.get("outputs") for c in json.loads(path.read_text())["cells"]), "outputs are left empty"


def _run_install_cell(cell, monkeypatch, installed: bool, source: str | None, environment: str | None):
    """Execute ``cell`` as the notebook would, with fpjax importable or not, ``FPJAX_SOURCE = source`` written in
    the cell (None: left empty) and the FPJAX_SOURCE environment variable; pip is not run but recorded."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: _FIND_SPEC(name, *a) if installed else None)
    commands = []
    monkeypatch.setattr(subprocess, "check_call", lambda command, *a, **k: commands.append(command) or 0)
    if environment is None:
        monkeypatch.delenv("FPJAX_SOURCE", raising=False)
    else:
        monkeypatch.setenv("FPJAX_SOURCE", environment)
    if source is not None:
        assert "FPJAX_SOURCE = ''\n" in cell
        cell = cell.replace("FPJAX_SOURCE = ''\n", f"FPJAX_SOURCE = {source!r}\n", 1)
    exec(compile(cell, "<install cell>", "exec"), {})
    return commands


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_installs_only_the_named_source(path, monkeypatch):
    cell = _install_cell(path)
    wheel, url = "/tmp/fpjax-0.1.0-py3-none-any.whl", "git+https://example.org/owner/fpjax"
    # Already importable: nothing is installed, whatever the settings.
    assert _run_install_cell(cell, monkeypatch, installed=True, source=None, environment=None) == []
    assert _run_install_cell(cell, monkeypatch, installed=True, source=wheel, environment=url) == []
    # Not installed and no source: an error saying what to set, and no pip call (no fallback to the bare name).
    with pytest.raises(RuntimeError, match="FPJAX_SOURCE"):
        _run_install_cell(cell, monkeypatch, installed=False, source=None, environment=None)
    with pytest.raises(RuntimeError, match="FPJAX_SOURCE"):
        _run_install_cell(cell, monkeypatch, installed=False, source=None, environment="")
    # A source: pip installs exactly it; the one written in the cell wins over the environment's.
    for source, environment, expected in ((wheel, None, wheel), (None, url, url), (wheel, url, wheel)):
        (command,) = _run_install_cell(cell, monkeypatch, installed=False, source=source, environment=environment)
        assert command[1:4] == ["-m", "pip", "install"] and command[-1] == expected, command
        assert "fpjax" not in command[:-1], f"installs the bare name: {command}"
