import gc
import os
import pathlib
import sys
import tempfile

# pytest-xdist runs several test processes: on a GPU each would otherwise take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tests/reference.py, from every test folder

# Tests compare float32 against float64 runs and SciPy references; the dtype of
# each computation follows its inputs, so enabling x64 changes no defaults of fpjax.
jax.config.update("jax_enable_x64", True)

# One persistent compilation cache for every test process (pytest-xdist's workers and the subprocesses the
# command-line tests start): each worker, and each module after jax.clear_caches() below, would otherwise
# compile the same programs again. Entries are keyed by the program and the JAX version, so a stale cache is
# never used wrongly; FPJAX_TEST_COMPILATION_CACHE=off turns it off.
_CACHE = os.environ.setdefault(
    "FPJAX_TEST_COMPILATION_CACHE", str(pathlib.Path(tempfile.gettempdir()) / "fpjax-test-compilation-cache")
)
if _CACHE != "off":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)  # inherited by subprocesses
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


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
