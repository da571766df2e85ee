"""Shared pieces of the notebook generators: the install cell and the writer."""

import pathlib

import nbformat as nbf

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def install_cell():
    """Installs fpjax from an explicit source named in one variable, never from the bare package name (on
    PyPI that name is not ours: a stranger registering it would be installed silently)."""
    return nbf.v4.new_code_cell(
        "# fpjax is not on PyPI (a package of that name there is not ours). On Colab, set FPJAX_SOURCE to this\n"
        "# repository's pip source: a git URL ('git+https://<host>/<owner>/fpjax') or the path of a wheel.\n"
        "FPJAX_SOURCE = ''\n"
        "import importlib.util, os, subprocess, sys\n"
        "if importlib.util.find_spec('fpjax') is None:\n"
        "    source = FPJAX_SOURCE or os.environ.get('FPJAX_SOURCE', '')\n"
        "    if not source:\n"
        "        raise RuntimeError('fpjax is not installed: set FPJAX_SOURCE above (a git URL or a wheel path) '\n"
        "                           'or the FPJAX_SOURCE environment variable, then run this cell again')\n"
        "    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', source])"
    )


def write_notebook(cells, name: str) -> None:
    """Write ``notebooks/NAME`` with empty outputs (CI executes it)."""
    metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    out = NOTEBOOKS / name
    nbf.write(nbf.v4.new_notebook(cells=cells, metadata=metadata), out)
    print("wrote", out)
