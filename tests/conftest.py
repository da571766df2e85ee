import gc
import os
import pathlib
import re
import subprocess
import sys
import tempfile

# pytest-xdist runs several test processes: on a GPU each would otherwise take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Compiling, not running, takes most of the suite's time: XLA's backend (LLVM) code optimisation off makes
# each compile far cheaper (measured on tests/learn/test_trainer.py + test_ddpm.py without the compilation
# cache: 103 -> 67 s wall, 181 -> 106 s CPU; the whole suite 770 -> 679 s, although long sampling chains run up to
# 3x slower). XLA's own program optimisation (fusion, layout) is unchanged, and so is the arithmetic up to the
# order of operations (the last bits); benchmarks and the command line run with the default. Set
# --xla_backend_optimization_level in XLA_FLAGS to choose another level (O1 saves a third as much).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tests/reference.py, from every test folder
from reference import float64_enabled  # noqa: E402

# The suite runs as users run: float32, JAX's default. A test that needs float64 throughout asks for the
# ``x64`` fixture below; a float32 test that compares with a float64 run of fpjax computes only that run in
# float64 (reference.float64_run). A request for float64 outside both (which JAX would silently truncate to
# float32) is an error, see pytest_configure. Implicit rank promotion is an error too (as in lineax and
# diffrax): broadcasting is written out.
jax.config.update("jax_numpy_rank_promotion", "raise")

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


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "run_bound: a test whose time goes into running, not compiling (long sampling chains); it runs in a "
        "subprocess compiled with XLA's default backend optimisation (see pytest_pyfunc_call)",
    )
    # Without x64 JAX truncates an explicit float64 request to float32 with this warning; in a test that
    # means a float64 reference silently computed in float32, so it fails the test (use the x64 fixture).
    config.addinivalue_line("filterwarnings", "error:Explicitly requested dtype.*float64:UserWarning")


@pytest.fixture
def x64():
    """Float64 for this test (:func:`reference.float64_enabled`): for tests that compare with a float64
    reference at float64 tolerances or need float64 (finite differences, tolerances below float32's).

    Everything the test computes in float64 must happen inside it: module-level constants and fixtures set
    up before this one (module-scoped ones) are computed in float32. A float32 test that compares with a
    float64 run of fpjax stays float32 and computes only the reference with :func:`reference.float64_run`.
    """
    with float64_enabled():
        yield


@pytest.fixture(autouse=True)
def _float32_after_each_test():
    """Float64 off again after every test: a command run in-process (``main(["bench", "accuracy", ...])``,
    ``fpjax bench solver``, ``precompute --dtype float64``) turns on ``jax_enable_x64`` for its process, which
    would otherwise run every later test of this worker in float64."""
    yield
    if jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", False)


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


_INNER = "FPJAX_TEST_RUN_BOUND_INNER"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run a ``run_bound`` test in a fresh ``pytest`` process with XLA's backend optimisation at its default (O3)
    instead of the suite's O0: its long chains run up to 3x slower at O0 (measured: the two PDS Langevin tests
    24 s at O3, 72 s at O0), which costs far more than the subprocess's start (about 5 s). The test is the same
    test, run once there; its failure is reported here with the subprocess's output."""
    if pyfuncitem.get_closest_marker("run_bound") is None or os.environ.get(_INNER):
        return None
    flags = re.sub(r"--xla_backend_optimization_level=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = dict(os.environ, XLA_FLAGS=(flags + " --xla_backend_optimization_level=3").strip(), **{_INNER: "1"})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid]
    done = subprocess.run(command, cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{pyfuncitem.nodeid} failed at O3 in a subprocess:\n{done.stdout[-6000:]}{done.stderr[-2000:]}",
                    pytrace=False)  # fmt: skip
    return True
