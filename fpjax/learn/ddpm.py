"""The DDPM baseline (Ho et al. 2020) with fpjax's U-Net, optimizer, SSIM check and image-by-image loop.

Images in ``[0, 1]`` are mapped to ``[-1, 1]`` (Ho et al.'s range). Linear
betas ``1e-4 .. 0.02`` over ``steps = 1000`` levels, indexed ``i = 0 .. steps-1``
with ``alpha_bar[i] = prod_{s <= i} (1 - beta_s)``; the network sees the time
``i / steps`` (its sinusoidal embedding scales by 1000, which gives DDPM's
integer time step back) and predicts the noise ``eps``::

    x_i = sqrt(alpha_bar[i]) x_0 + sqrt(1 - alpha_bar[i]) eps,   loss = E |eps_theta(x_i, i) - eps|^2

Samplers: ancestral (Ho et al.'s ``sigma_i^2 = beta_i``) and DDIM (Song et
al., ``eta = 0`` deterministic), both one ``lax.scan``. Denoising an image
``y = x_0 + s z`` (noise std ``s`` in ``[0, 1]`` units) starts the chain at the
level ``i*`` whose noise-to-signal ratio ``sqrt((1 - alpha_bar)/alpha_bar)``
matches ``2 s`` and at ``x_(i*) = sqrt(alpha_bar[i*]) (2 y - 1)``.

:class:`DDPM` is an objective (:mod:`fpjax.learn.objectives`) for :func:`fpjax.learn.trainer.train`, so
both methods share the optimizer, the evaluation and the loop: a fair comparison. Its forward SDE is its own
VP SDE (:attr:`DDPM.sde`), whatever the FP configuration of the trajectories.

Calling convention, that of :mod:`fpjax.diffusion.sampling`: the model first (the noise predictor
``eps_fn(x, level)``), then the data (the states ``x`` / ``noisy`` images, or the ``shape`` to generate), then
the PRNG ``key``, then the process and its settings (the :class:`DDPM`, which holds both); every extra is
keyword-only::

    denoise(eps_fn, noisy, key, ddpm, *, noise_std, preconditioner=None)
    generate(eps_fn, shape, key, ddpm, *, dtype=jnp.float32, preconditioner=None)
    ddim_sample(eps_fn, x, key, ddpm, *, start=None, count=None, preconditioner=None)

(likewise :func:`ancestral_sample` and :func:`reverse`). A PDS ``preconditioner`` enters DDPM's samplers in the
paper's form (``M M^T`` on ``eps``, ``M z`` on the noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.diffusion import pds
from fpjax.diffusion.sde import VPSDE, perturb
from fpjax.learn import trainer as training
from fpjax.learn.objectives import Batch, Draw, TrainData, image_indices, loss_in_memory, points


@dataclasses.dataclass(frozen=True)
class DDPM:
    """Ho et al.'s noise-prediction objective and samplers (hashable; a ``TrainConfig`` field).

    Attributes:
      steps: diffusion levels.
      beta_start, beta_end: the linear beta schedule.
      sampler: ``"ddim"`` or ``"ancestral"`` for the denoising check and generation.
      sampler_steps: DDIM steps over the whole chain (a denoising run from level ``i*`` takes the
        ``~ sampler_steps * i* / steps`` of them below ``i*``); the ancestral sampler takes every level.
      eta: DDIM's stochasticity (0: deterministic).
      max_train_noise: train only on the levels up to the one matching this noise std (``[0, 1]`` units): the
        levels a denoising run from that noise visits (``None``: all levels, Ho et al.).
      fixed_noise: train on the single level matching this noise std and denoise in one step (the ``x_0``
        prediction): a fixed-sigma denoiser (``None``: off).
    """

    steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    sampler: str = "ddim"
    sampler_steps: int = 100
    eta: float = 0.0
    max_train_noise: float | None = None
    fixed_noise: float | None = None

    def __post_init__(self):
        if self.sampler not in ("ddim", "ancestral"):
            raise ValueError(f"sampler must be 'ddim' or 'ancestral', got {self.sampler!r}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")

    def betas(self):
        return np.linspace(self.beta_start, self.beta_end, self.steps)

    def alphas_bar(self):
        """``(steps,)`` ``alpha_bar[i]`` (NumPy float64: a static table)."""
        return np.cumprod(1.0 - self.betas())

    def _clean_draw(self, key, count: int, current, config: training.TrainConfig) -> Draw:
        """The clean images (level 0) of a batch: DDPM trains on the clean images (``split(key, 3)[0]``)."""
        index = image_indices(jax.random.split(key, 3)[0], count, current, config.batch_size, config.replay)
        return Draw(index, jnp.zeros_like(index))

    def train_levels(self, key, batch: int):
        """``(batch,)`` training levels: uniform over all levels, over those up to ``max_train_noise``'s, or
        ``fixed_noise``'s only."""
        if self.fixed_noise is not None:
            return jnp.full((batch,), self.level_for_noise(2.0 * self.fixed_noise))
        top = self.steps if self.max_train_noise is None else self.level_for_noise(2.0 * self.max_train_noise) + 1
        return jax.random.randint(key, (batch,), 0, top)

    def level_for_noise(self, std: float) -> int:
        """The level ``i*`` whose ``sqrt((1 - alpha_bar)/alpha_bar)`` is closest to ``std`` (``[-1, 1]`` units)."""
        ab = self.alphas_bar()
        return int(np.argmin(np.abs(np.sqrt((1 - ab) / ab) - std)))

    # -- the objective interface (fpjax.learn.objectives) --------------------------------------------

    def with_sde(self, sde) -> DDPM:
        """DDPM's SDE is its own VP SDE: the trajectories' (fpjax's ``dx = g dW``) does not change it."""
        del sde
        return self

    def draw(self, key, count: int, T: int, current, config: training.TrainConfig) -> Draw:
        del T
        return self._clean_draw(key, count, current, config)

    def loss(self, net, key, data: TrainData, config: training.TrainConfig):
        """:meth:`batch_loss` on trajectories in memory."""
        return loss_in_memory(self, net, key, data, config)

    def batch_loss(self, net, key, batch: Batch, config: training.TrainConfig, T: int):
        """Ho et al.'s loss on the clean images of :meth:`draw` (the same ``key``)."""
        del T
        _, k_level, k_noise = jax.random.split(key, 3)
        x0, labels = 2.0 * batch.x - 1.0, batch.labels
        level = self.train_levels(k_level, config.batch_size)
        eps = jax.random.normal(k_noise, x0.shape, x0.dtype)
        xt = q_sample(self, x0, level, eps)
        predicted = net(xt, level.astype(x0.dtype) / self.steps, labels)
        return jnp.mean((predicted - eps) ** 2)

    # DDPM's chain is the VP SDE with beta(t) = steps * beta; the network at time t = i / steps has seen level i,
    # i + 1 steps of the chain, so its score is -eps / sqrt(1 - alpha_bar(t + 1 / steps)) (in [-1, 1] units).
    @property
    def sde(self) -> VPSDE:
        return VPSDE(self.steps * self.beta_start, self.steps * self.beta_end)

    def score(self, net, labels, config: training.TrainConfig):
        def score(x, t):
            std = jnp.sqrt(self.sde.variance(t + 1.0 / self.steps))
            return -net(x, t, labels) / std.reshape((-1,) + (1,) * (x.ndim - 1))

        return score

    def fpe_draw(self, key, count: int, T: int, current, config: training.TrainConfig, t=None) -> Draw:
        del T, t
        return self._clean_draw(key, count, current, config)

    def fpe_points(self, key, data: TrainData, config: training.TrainConfig, t=None):
        """``(x, t, labels)``: clean images diffused to random times, or to the given ``(batch,)`` times ``t``."""
        count, T, current = data.pool
        return self.fpe_inputs(key, points(data, self.fpe_draw(key, count, T, current, config)), config, T, t)

    def fpe_inputs(self, key, batch: Batch, config: training.TrainConfig, T: int, t=None):
        """The clean images of :meth:`fpe_draw` diffused to random times, or to the given ``(batch,)`` times."""
        del T
        _, k_time, k_noise = jax.random.split(key, 3)
        x0, labels = 2.0 * batch.x - 1.0, batch.labels
        if t is None:
            t = jax.random.uniform(k_time, (config.batch_size,), x0.dtype, 2.0 / self.steps, 1.0)
        x, _ = perturb(k_noise, x0, t + 1.0 / self.steps, self.sde)
        return x, t, labels

    def denoise(self, net, noisy, labels, key, config: training.TrainConfig):
        eps_fn = lambda x, level: net(x, level / self.steps, labels)
        return denoise(eps_fn, noisy, key, self, noise_std=config.noise_level)


def q_sample(ddpm: DDPM, x0, level, eps):
    """``x_i = sqrt(alpha_bar[i]) x_0 + sqrt(1 - alpha_bar[i]) eps`` for ``(B,)`` levels ``i``."""
    ab = jnp.asarray(ddpm.alphas_bar(), x0.dtype)[level].reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def ancestral_sample(eps_fn: Callable, x, key, ddpm: DDPM, *, start: int | None = None, preconditioner=None):
    """Ho et al.'s reverse chain from level ``start`` (default the last) down to ``x_0``.

    ``eps_fn(x, level)`` takes ``(B, ...)`` states and ``(B,)`` float levels. A PDS ``preconditioner``
    ``M`` turns the noise-prediction (score) term into ``M M^T eps`` and the added noise into ``M z``.
    """
    m = pds.as_preconditioner(preconditioner)
    start = ddpm.steps - 1 if start is None else start
    betas = jnp.asarray(ddpm.betas(), x.dtype)
    ab = jnp.asarray(ddpm.alphas_bar(), x.dtype)
    levels = jnp.arange(start, -1, -1)

    def step(x, inputs):
        i, k = inputs
        eps = m.gram(eps_fn(x, jnp.full((x.shape[0],), i, x.dtype)))
        mean = (x - betas[i] / jnp.sqrt(1.0 - ab[i]) * eps) / jnp.sqrt(1.0 - betas[i])
        noise = jnp.where(i > 0, jnp.sqrt(betas[i]), 0.0) * m.apply(jax.random.normal(k, x.shape, x.dtype))
        return mean + noise, None

    x, _ = jax.lax.scan(step, x, (levels, jax.random.split(key, levels.shape[0])))
    return x


def ddim_levels(ddpm: DDPM, start: int, count: int) -> np.ndarray:
    """Descending levels from ``start`` to 0 on DDIM's uniform sub-sequence (``count`` steps over the chain)."""
    stride = max(ddpm.steps // max(count, 1), 1)
    levels = np.arange(0, start + 1, stride)[::-1]
    return levels if levels[0] == start else np.concatenate([[start], levels])


def ddim_sample(
    eps_fn: Callable, x, key, ddpm: DDPM, *, start: int | None = None, count: int | None = None, preconditioner=None
):
    """DDIM (``eta = ddpm.eta``) from level ``start`` to ``x_0`` over the levels of :func:`ddim_levels`.

    A PDS ``preconditioner`` replaces ``eps`` by ``M M^T eps`` and the noise by ``M z``.
    """
    m = pds.as_preconditioner(preconditioner)
    start = ddpm.steps - 1 if start is None else start
    levels = ddim_levels(ddpm, start, count or ddpm.sampler_steps)
    ab = jnp.asarray(ddpm.alphas_bar(), x.dtype)
    current = jnp.asarray(levels)
    previous = jnp.asarray(np.concatenate([levels[1:], [-1]]))

    def step(x, inputs):
        i, j, k = inputs
        ab_i = ab[i]
        ab_j = jnp.where(j >= 0, ab[jnp.maximum(j, 0)], 1.0)
        eps = m.gram(eps_fn(x, jnp.full((x.shape[0],), i, x.dtype)))
        x0 = (x - jnp.sqrt(1.0 - ab_i) * eps) / jnp.sqrt(ab_i)
        sigma = ddpm.eta * jnp.sqrt((1.0 - ab_j) / (1.0 - ab_i) * (1.0 - ab_i / ab_j))
        direction = jnp.sqrt(jnp.maximum(1.0 - ab_j - sigma**2, 0.0)) * eps
        noise = sigma * m.apply(jax.random.normal(k, x.shape, x.dtype))
        return jnp.sqrt(ab_j) * x0 + direction + noise, None

    x, _ = jax.lax.scan(step, x, (current, previous, jax.random.split(key, len(levels))))
    return x


def reverse(eps_fn: Callable, x, key, ddpm: DDPM, *, start: int | None = None, preconditioner=None):
    """``ddpm.sampler``'s chain (:func:`ddim_sample` or :func:`ancestral_sample`) from level ``start``."""
    if ddpm.sampler == "ddim":
        return ddim_sample(eps_fn, x, key, ddpm, start=start, preconditioner=preconditioner)
    return ancestral_sample(eps_fn, x, key, ddpm, start=start, preconditioner=preconditioner)


def denoise(eps_fn: Callable, noisy, key, ddpm: DDPM, *, noise_std: float, preconditioner=None):
    """Denoise ``(B, H, W, C)`` images in ``[0, 1]`` carrying Gaussian noise of std ``noise_std``."""
    start = ddpm.level_for_noise(2.0 * noise_std)
    ab = float(ddpm.alphas_bar()[start])
    x = np.sqrt(ab) * (2.0 * noisy - 1.0)
    if ddpm.fixed_noise is not None:  # one step: the x_0 prediction at the only trained level
        eps = eps_fn(x, jnp.full((x.shape[0],), start, x.dtype))
        return jnp.clip(((x - np.sqrt(1.0 - ab) * eps) / np.sqrt(ab) + 1.0) / 2.0, 0.0, 1.0)
    out = reverse(eps_fn, x, key, ddpm, start=start, preconditioner=preconditioner)
    return jnp.clip((out + 1.0) / 2.0, 0.0, 1.0)


def generate(eps_fn: Callable, shape, key, ddpm: DDPM, *, dtype=jnp.float32, preconditioner=None):
    """``shape = (B, H, W, C)`` images in ``[0, 1]`` from ``N(0, I)`` (``N(0, M M^T)`` with PDS) at the last level."""
    prior_key, key = jax.random.split(key)
    x = pds.as_preconditioner(preconditioner).apply(jax.random.normal(prior_key, shape, dtype))
    return jnp.clip((reverse(eps_fn, x, key, ddpm, preconditioner=preconditioner) + 1.0) / 2.0, 0.0, 1.0)


def eps_function(result: training.TrainResult, labels=None, ema: bool = True) -> Callable:
    """``eps(x, level)`` of a DDPM trained with :func:`fpjax.learn.trainer.train`."""
    ddpm = result.config.objective
    params = result.state.ema if ema else result.state.params
    net = training.network(result.graphdef, params, result.uses_labels)
    return lambda x, level: net(x, level / ddpm.steps, labels)
