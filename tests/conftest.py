import gc
import os
import pathlib
import sys

# pytest-xdist runs several test processes: on a GPU each would otherwise take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tests/reference.py, from every test folder

# Tests compare float32 against float64 runs and SciPy references; the dtype of
# each computation follows its inputs, so enabling x64 changes no defaults of fpjax.
jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop the compiled programs of each test module when it ends.

    Every XLA:CPU executable keeps memory maps; the whole suite in one process
    compiled enough of them to pass Linux's default limit of 65530 maps
    (measured: 36,600 maps two-thirds of the way through, growing ~1,000 per
    30 s), at which point XLA aborted the process inside a compile.
    ``jax.clear_caches()`` released 75% of them (3437 -> 867 after the
    projection tests).
    """
    yield
    jax.clear_caches()
    gc.collect()
