"""Every matrix product whose float32 accuracy matters asks for full precision (GPU and TPU default to bf16/TF32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.data import sample_images
from fpjax.solver import projection


def _dot_precisions(fn, *args):
    """The precision of every ``dot_general`` in the jaxpr of ``fn(*args)``, sub-jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else (value,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _highest(precision):
    return precision is not None and all(p == jax.lax.Precision.HIGHEST for p in precision)


IMAGE = jnp.asarray(sample_images(32)[0], jnp.float32)
M0 = fpjax.initial_log_density(IMAGE)


@pytest.mark.parametrize(
    "name, fn, args",
    [
        ("position_kde blur", lambda x: fpjax.initial_log_density(x), (IMAGE,)),
        ("intensity_kde", lambda x: fpjax.initial_log_density(x, "intensity_kde"), (IMAGE,)),
        (
            "dst preconditioner",
            lambda m: fpjax.solve(m, fpjax.FPConfig(T=2, scheme=fpjax.LogDensity(preconditioner="dst"))).m,
            (M0,),
        ),
        ("spectral", lambda m: fpjax.solve(m, fpjax.FPConfig(T=3, scheme="spectral")).m, (M0,)),
        ("density", lambda m: fpjax.solve(m, fpjax.FPConfig(T=2, scheme="density")).m, (M0,)),
        ("arnoldi", lambda m: projection.seed_bases(jnp.stack([m] * 3), fpjax.FPConfig(T=2), 4), (M0,)),
    ],
)
def test_matmuls_run_at_highest_precision(name, fn, args):
    precisions = _dot_precisions(fn, *args)
    assert precisions, f"{name}: no matrix product found; the test would pass vacuously"
    low = [p for p in precisions if not _highest(p)]
    assert not low, f"{name}: {len(low)} of {len(precisions)} products at default precision"
    assert np.isfinite(np.asarray(jax.tree_util.tree_leaves(fn(*args))[0])).all()
