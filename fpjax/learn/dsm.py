"""Continuous-time denoising score matching for small score networks, with the optional FP regulariser.

``J_DSM = E_t E_(x0, z) |sigma(t) s(x_t, t) + z|^2 / D`` with ``t ~ U(t_min, 1)`` and
``x_t = a(t) x_0 + sigma(t) z`` (likelihood weighting ``lambda(t) = sigma(t)^2`` absorbed); the network outputs
``sigma(t) s`` (Song et al.'s output scaling). ``J_FP = J_DSM + R_FP`` (:func:`fpjax.diffusion.score_fpe.regulariser`,
eq. 19) when a :class:`~fpjax.diffusion.score_fpe.Regulariser` is given. Training runs ``chunk`` Adam steps per jitted
``lax.scan``, with the optimizer and the gradient step of :mod:`fpjax.learn.optim` that the image trainer uses too.

The loop itself is not :func:`fpjax.learn.trainer.train_steps`: that one draws image trajectories
(:class:`~fpjax.learn.objectives.TrainData`) for a U-Net ``net(x, t, labels)`` with dropout keys, EMA and
SSIM-driven evaluations, none of which a 2-D or 64-D point cloud and an MLP ``net(x, t)`` have; wrapping the
points as one-level "trajectories" and the loss as an objective would only hide what is trained.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import tqdm
from flax import nnx

from fpjax.diffusion.score_fpe import Regulariser, regulariser
from fpjax.diffusion.sde import SDE, perturb
from fpjax.learn import optim
from fpjax.learn.models.mlp import ScoreMLP


@dataclasses.dataclass(frozen=True)
class DSMConfig:
    """Attributes: ``steps`` Adam steps of ``batch_size`` at ``learning_rate``; ``t_min`` the smallest time (at
    least the regulariser's finite-difference step); ``reg`` the FP regulariser or ``None``; ``hidden``/``depth``
    the MLP; ``chunk`` steps per jitted call."""

    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 2e-3
    t_min: float = 1e-3
    reg: Regulariser | None = None
    hidden: int = 128
    depth: int = 3
    chunk: int = 500


def score_function(graphdef, params, sde: SDE):
    """``s(x, t) = net(x, t) / sigma(t)`` from a split :class:`~fpjax.learn.models.mlp.ScoreMLP`."""
    net = nnx.merge(graphdef, params)
    return lambda x, t: net(x, t) / jnp.sqrt(sde.variance(t))[:, None]


def dsm_loss(score, x0, key, sde, t_min: float):
    k_t, k_z = jax.random.split(key)
    t = jax.random.uniform(k_t, x0.shape[:1], x0.dtype, t_min, 1.0)
    x, z = perturb(k_z, x0, t, sde)
    return jnp.mean((jnp.sqrt(sde.variance(t))[:, None] * score(x, t) + z) ** 2)


STEP_KEYS = ("batch", "dsm", "regulariser", "regulariser_t", "regulariser_x")


def step_keys(key, step) -> dict:
    """The keys training step ``step`` uses, by purpose (:data:`STEP_KEYS`): one split of ``fold_in(key, step)``,
    so no key serves two purposes (``fold_in(k, 1)`` beside ``split(k, 4)`` gave the batch and the regulariser
    the same key: with JAX's keys ``fold_in(k, i)`` and ``split(k, n)[i]`` coincide)."""
    return dict(zip(STEP_KEYS, jax.random.split(jax.random.fold_in(key, step), len(STEP_KEYS)), strict=True))


def _loss(graphdef, params, x0, keys: dict, sde, config: DSMConfig):
    score = score_function(graphdef, params, sde)
    k_dsm, k_reg, k_t, k_x = (keys[name] for name in STEP_KEYS[1:])
    loss = dsm_loss(score, x0, k_dsm, sde, config.t_min)
    if config.reg is not None:
        t = jax.random.uniform(k_t, x0.shape[:1], x0.dtype, config.t_min + config.reg.config.h_s, 1.0)
        x, _ = perturb(k_x, x0, t, sde)
        loss = loss + regulariser(score, x, t, sde, k_reg, config.reg)
    return loss


def train_score(data, sde: SDE, key, config: DSMConfig = DSMConfig(), progress: bool = False):
    """Fit a :class:`ScoreMLP` to ``(N, D)`` data; returns ``(graphdef, params, losses)`` (mean loss per chunk)."""
    if data.ndim != 2:
        raise ValueError(f"data must be (N, D), got shape {data.shape}")
    init_key, key = jax.random.split(key)
    net = ScoreMLP(data.shape[1], config.hidden, config.depth, rngs=nnx.Rngs(init_key))
    graphdef, params = nnx.split(net)
    optimizer = optim.adam(config.learning_rate)
    opt_state = optimizer.init(params)

    @jax.jit
    def chunk(params, opt_state, start):
        def step(carry, i):
            params, opt_state = carry
            keys = step_keys(key, i)
            batch = data[jax.random.randint(keys["batch"], (config.batch_size,), 0, data.shape[0])]
            loss_fn = lambda p: _loss(graphdef, p, batch, keys, sde, config)
            params, opt_state, loss = optim.gradient_step(optimizer, loss_fn, params, opt_state)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), start + jnp.arange(config.chunk))
        return params, opt_state, jnp.mean(losses)

    losses = []
    for start in tqdm.trange(0, config.steps, config.chunk, desc="dsm", disable=not progress):
        params, opt_state, loss = chunk(params, opt_state, start)
        losses.append(float(loss))
        if not jnp.isfinite(loss):
            raise FloatingPointError(f"DSM training diverged at step {start + config.chunk}: loss {loss}")
    return graphdef, params, losses
