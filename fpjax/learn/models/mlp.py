"""A small MLP score network for low-dimensional data (2-D mixtures, flattened 8x8 digits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fpjax.learn.models.unet import sinusoidal_embedding


class ScoreMLP(nnx.Module):
    """``(x, t) -> (B, D)``: SiLU MLP on ``[x, sinusoidal(t)]``; smooth in ``x`` and ``t`` (the score FPE needs
    second derivatives in ``x`` and one in ``t``).

    Args:
      dim: data dimension ``D`` (inputs are ``(B, D)``).
      hidden, depth: width and number of hidden layers.
      time_features: size of the time embedding.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_features: int = 16, *, rngs: nnx.Rngs):
        self.time_features = time_features
        sizes = [dim + time_features] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.out = nnx.Linear(hidden, dim, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x, t):
        h = jnp.concatenate([x, sinusoidal_embedding(t, self.time_features, scale=100.0).astype(x.dtype)], axis=-1)
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        return self.out(h)
