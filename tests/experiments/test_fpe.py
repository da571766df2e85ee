import jax
import numpy as np
import pytest

from fpjax.experiments import fpe as fpe_experiment


def test_digits_are_the_bundled_set_uniformly_dequantised():
    sklearn = pytest.importorskip("sklearn.datasets")
    levels = sklearn.load_digits().data
    x = fpe_experiment.load_digits(jax.random.key(0))
    assert x.shape == (1797, 64)
    # Each value lies in its grey level's bin [k/17, (k+1)/17), and the offsets are spread over the bin.
    assert np.all(x >= levels / 17.0) and np.all(x < (levels + 1) / 17.0)
    offsets = x * 17.0 - levels
    assert 0.45 < offsets.mean() < 0.55 and offsets.std() > 0.25
