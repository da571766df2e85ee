import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tests/reference.py, from every test folder

# Tests compare float32 against float64 runs and SciPy references; the dtype of
# each computation follows its inputs, so enabling x64 changes no defaults of fpjax.
jax.config.update("jax_enable_x64", True)
