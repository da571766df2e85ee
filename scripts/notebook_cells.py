"""Shared pieces of the notebook generators: the install cell and the writer."""

import pathlib

import nbformat as nbf

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def install_cell():
    """Installs fpjax where it is missing (Colab). Until fpjax is on PyPI, set FPJAX_SPEC to
    this repository's pip spec, e.g. 'git+https://<host>/<owner>/fpjax'."""
    return nbf.v4.new_code_cell(
        "# Install fpjax where it is missing (Colab). Until fpjax is on PyPI, set FPJAX_SPEC to\n"
        "# this repository's pip spec, e.g. 'git+https://<host>/<owner>/fpjax'.\n"
        "import importlib.util, os, subprocess, sys\n"
        "if importlib.util.find_spec('fpjax') is None:\n"
        "    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', os.environ.get('FPJAX_SPEC', 'fpjax')])"
    )


def write_notebook(cells, name: str) -> None:
    """Write ``notebooks/NAME`` with empty outputs (CI executes it)."""
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    out = NOTEBOOKS / name
    nbf.write(nbf.v4.new_notebook(cells=cells, metadata=metadata), out)
    print("wrote", out)
