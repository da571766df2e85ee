import jax

# Tests compare float32 against float64 runs and SciPy references; the dtype of
# each computation follows its inputs, so enabling x64 changes no defaults of fpjax.
jax.config.update("jax_enable_x64", True)
