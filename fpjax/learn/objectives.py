"""Training objectives on score-embedded trajectories, and the batches they draw.

An *objective* is what :func:`fpjax.learn.trainer.train` needs to know about a method. It is a frozen dataclass
(hashable: it is a :class:`~fpjax.learn.trainer.TrainConfig` field, a static argument of the compiled steps) with

* ``sde``: the forward :class:`~fpjax.diffusion.sde.SDE` its score belongs to;
* ``with_sde(sde)``: the objective bound to the SDE of the FP configuration the trajectories were made with
  (:func:`~fpjax.learn.trainer.train` binds it; DDPM keeps its own VP SDE);
* ``draw(key, count, T, current, config)``: the :class:`Draw` (image indices and trajectory levels) one step
  reads, from the step's key, before anything is read: a data source (:mod:`fpjax.learn.sources`) then reads
  only those points;
* ``batch_loss(net, key, batch, config, T)``: the scalar loss on the :class:`Batch` of those points (the same
  ``key``); ``loss(net, key, data, config)`` is the two on trajectories in memory (:class:`TrainData`);
* ``score(net, labels, config)``: ``s(x, t)`` of a network ``net(x, t, labels)``;
* ``fpe_draw(key, count, T, current, config, t=None)`` and ``fpe_inputs(key, batch, config, T, t=None)``: ``(x, t,
  labels)``, where the score-FPE regulariser evaluates it (``fpe_points(key, data, config, t=None)`` in memory);
* ``denoise(net, noisy, labels, key, config)``: the denoising check of the SSIM early stopping.

``config`` is the :class:`~fpjax.learn.trainer.TrainConfig` (``lam``, ``parametrization``, ``batch_size``,
``replay``, ``stratified``, ``sampler``). :class:`EmbeddedDenoising` is fpjax's (eq. 29),
:class:`FPRegularised` adds the score-FPE regulariser to any objective, :class:`fpjax.learn.ddpm.DDPM` is the
baseline.

The score-embedded denoising loss (cross-matrix paper eq. 29, DESIGN.md section 6)::

    L = E_{n, z} || s_theta(x^n + lambda z, t_n) lambda + z ||^2 / (2 g(t_n)^2)

with ``x^n`` the score-embedded image at ``t_n`` and ``lambda = 0.1``. The
squared norm is averaged over pixels and channels rather than summed (a
constant factor ``H W C``; it keeps one learning rate right for every image
size) and over the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.diffusion import sampling
from fpjax.diffusion import sde as sde_lib
from fpjax.diffusion.score_fpe import Regulariser, regulariser


def sample_time_indices(key, batch: int, T: int, stratified: bool = False):
    """``(batch,)`` time indices in ``0..T``: uniform, or one per equal stratum of ``[0, T+1)``."""
    if not stratified:
        return jax.random.randint(key, (batch,), 0, T + 1)
    u = (jnp.arange(batch) + jax.random.uniform(key, (batch,))) / batch
    return jnp.minimum(jnp.floor(u * (T + 1)).astype(jnp.int32), T)


def embedded_denoising_loss(score, x, t, g_t, z, lam: float = 0.1):
    """Eq. 29 for one batch.

    Args:
      score: ``s(x, t)`` for ``(B, H, W, C)`` images and ``(B,)`` times.
      x: ``(B, H, W, C)`` score-embedded images ``x^n``.
      t: ``(B,)`` their times ``t_n``.
      g_t: ``(B,)`` the diffusion ``g(t_n)``.
      z: ``(B, H, W, C)`` standard normal noise.
      lam: the perturbation ``lambda``.
    Returns:
      the scalar loss.
    """
    s = score(x + lam * z, t)
    per_image = jnp.mean((s * lam + z) ** 2, axis=(1, 2, 3)) / (2 * g_t**2)
    return jnp.mean(per_image)


# ----------------------------------------------------------------------------------------------
# what the steps draw from


class Draw(NamedTuple):
    """The trajectory points one training step reads (drawn from the step's key before the data are read, so
    that a data source reads only these: :mod:`fpjax.learn.sources`).

    index: ``(M,)`` int image indices; level: ``(M,)`` int trajectory levels ``n`` in ``0..T``.
    """

    index: jax.Array
    level: jax.Array


class Batch(NamedTuple):
    """The points of a :class:`Draw`: ``x`` ``(M, H, W, C)`` the score-embedded ``x^n`` of each drawn image at its
    level ``n``, ``t`` ``(M,)`` their times ``n / T``, ``labels`` ``(M,)`` the images' embedding labels."""

    x: jax.Array
    t: jax.Array
    labels: jax.Array


class TrainData(NamedTuple):
    """Trajectories held in memory, and the image being trained (a pytree: traced, so new data needs no new
    compilation). :func:`points` reads a :class:`Draw` from them; the trainer reads its batches through a data
    source (:mod:`fpjax.learn.sources`), of which this is the in-memory one.

    trajectories: ``(K, T+1, H, W, C)`` score-embedded trajectories.
    labels: ``(K,)`` per-image embedding labels.
    current: ``()`` int: the image being trained (image by image), or -1 to draw from all ``K`` uniformly.

    The diffusion ``g`` is not here: it is the objective's SDE (:func:`fpjax.learn.trainer.train` binds it).
    """

    trajectories: jax.Array
    labels: jax.Array
    current: jax.Array = -1

    @property
    def pool(self) -> tuple:
        """``(count, T, current)``: what an objective's ``draw`` needs to know of the data."""
        return self.trajectories.shape[0], self.trajectories.shape[1] - 1, self.current


def points(data: TrainData, draw: Draw) -> Batch:
    """The :class:`Batch` of ``draw`` from trajectories in memory."""
    T = data.trajectories.shape[1] - 1
    x = data.trajectories[draw.index, draw.level]
    return Batch(x, draw.level.astype(x.dtype) / T, data.labels[draw.index])


def loss_in_memory(objective, net, key, data: TrainData, config):
    """``objective.batch_loss`` on the points its ``draw`` takes for ``key`` from trajectories in memory."""
    count, T, current = data.pool
    draw = objective.draw(key, count, T, current, config)
    return objective.batch_loss(net, key, points(data, draw), config, T)


def image_indices(key, count: int, current, batch_size: int, replay: float):
    """``(batch_size,)`` image indices in ``0..count-1``: the ``current`` image, replayed earlier ones, or all
    (``current < 0``)."""
    k_image, k_replay = jax.random.split(key)
    current = jnp.asarray(current)
    everywhere = jax.random.randint(k_image, (batch_size,), 0, count)
    # Replay: with probability ``replay`` a sample comes from an image trained before the current one.
    earlier = jax.random.randint(k_image, (batch_size,), 0, jnp.maximum(current, 1))
    replayed = (jax.random.uniform(k_replay, (batch_size,)) < replay) & (current > 0)
    return jnp.where(current < 0, everywhere, jnp.where(replayed, earlier, current))


def trajectory_draw(key, count: int, T: int, current, config, n=None) -> Draw:
    """``config.batch_size`` trajectory points: images as :func:`image_indices` draws them, at random levels
    (uniform or stratified) or at the given ``(batch,)`` levels ``n``. Uses the first two of ``split(key, 3)``;
    the third is the noise's (:func:`batch_noise`)."""
    k_image, k_time, _ = jax.random.split(key, 3)
    index = image_indices(k_image, count, current, config.batch_size, config.replay)
    if n is None:
        n = sample_time_indices(k_time, config.batch_size, T, config.stratified)
    return Draw(index, n)


def batch_noise(key, x):
    """Standard normal noise of ``x``'s shape from the third of ``split(key, 3)`` (see :func:`trajectory_draw`)."""
    return jax.random.normal(jax.random.split(key, 3)[2], x.shape, x.dtype)


def trajectory_batch(key, data: TrainData, config, n=None):
    """``(x, t, z, labels)``: ``config.batch_size`` trajectory points ``x^n`` at random step indices ``n`` (or at
    the given ``(batch,)`` indices), their times ``t_n = n / T``, standard normal noise of their shape and the
    images' labels."""
    batch = points(data, trajectory_draw(key, *data.pool, config, n))
    return batch.x, batch.t, batch_noise(key, batch.x), batch.labels


def _levels_at(t, T: int):
    """The trajectory levels nearest the times ``t`` (``None`` stays ``None``)."""
    return None if t is None else jnp.clip(jnp.round(t * T).astype(jnp.int32), 0, T)


# ----------------------------------------------------------------------------------------------
# objectives


@dataclasses.dataclass(frozen=True)
class EmbeddedDenoising:
    """fpjax's objective: eq. 29 on the score-embedded trajectories; the check denoises with the reverse SDE.

    ``sde``: the SDE the trajectories were made with (:func:`fpjax.diffusion.sde.from_fp_config` of their FP
    configuration): the loss weights by its ``g(t_n)``, the check samples with it, the score-FPE regulariser
    and diagnostics use it. ``None`` until :func:`fpjax.learn.trainer.train` binds it (:meth:`with_sde`); one
    given here must agree with the trajectories'.
    """

    sde: sde_lib.SDE | None = None

    def with_sde(self, sde: sde_lib.SDE) -> EmbeddedDenoising:
        if self.sde is None:
            return dataclasses.replace(self, sde=sde)
        if not sde_lib.equivalent(self.sde, sde):
            raise ValueError(
                f"the objective's SDE {self.sde} is not the one the trajectories were made with ({sde}); "
                "leave EmbeddedDenoising(sde=None) to take the FP configuration's"
            )
        return self

    def _bound_sde(self) -> sde_lib.SDE:
        if self.sde is None:
            raise ValueError(
                "EmbeddedDenoising has no SDE yet: train() binds the one of the FP configuration; outside train() "
                "use the trained TrainResult.config.objective, or EmbeddedDenoising(sde=sde.from_fp_config(config))"
            )
        return self.sde

    def score(self, net, labels, config) -> Callable:
        def score(x, t):
            out = net(x, t, labels)
            return -out / config.lam if config.parametrization == "noise" else out

        return score

    def check_weights(self, T: int) -> None:
        """Refuse an SDE whose ``g`` is zero (or not finite) at a step time ``t_n = n / T``: eq. 29 weights the
        loss by ``1 / (2 g(t_n)^2)`` there, which would make it infinite."""
        times = np.arange(T + 1) / T
        g = np.asarray(self._bound_sde().g(jnp.asarray(times, jnp.float32)), np.float64)
        bad = np.flatnonzero(~(np.isfinite(g) & (g > 0)))
        if bad.size:
            raise ValueError(
                f"the diffusion g is {g[bad[0]]:g} at t = {times[bad[0]]:g} ({bad.size} of the {T + 1} step times): "
                "the embedded denoising loss weights by 1 / (2 g^2) there; train on trajectories of a g > 0 at "
                "every time (FPConfig.g)"
            )

    def draw(self, key, count: int, T: int, current, config) -> Draw:
        """The points :meth:`batch_loss` reads for ``key``: ``config.batch_size`` images at random levels."""
        return trajectory_draw(key, count, T, current, config)

    def batch_loss(self, net, key, batch: Batch, config, T: int):
        """Eq. 29 on the points of :meth:`draw` (the same ``key``; ``T``: the trajectories' steps)."""
        del T
        g_t = self._bound_sde().g(batch.t)
        z = batch_noise(key, batch.x)
        return embedded_denoising_loss(self.score(net, batch.labels, config), batch.x, batch.t, g_t, z, config.lam)

    def loss(self, net, key, data: TrainData, config):
        """:meth:`batch_loss` on trajectories in memory."""
        return loss_in_memory(self, net, key, data, config)

    def fpe_draw(self, key, count: int, T: int, current, config, t=None) -> Draw:
        """The points of :meth:`fpe_inputs`: random levels, or those nearest ``(batch,)`` times ``t``."""
        return trajectory_draw(key, count, T, current, config, _levels_at(t, T))

    def fpe_inputs(self, key, batch: Batch, config, T: int, t=None):
        """``(x, t, labels)``: eq. 29's noisy inputs at the points of :meth:`fpe_draw` (``T``: the trajectories';
        the times ``t`` are those of the drawn levels)."""
        del t
        # t = 0 has no backward finite difference: those draws move one step later.
        return batch.x + config.lam * batch_noise(key, batch.x), jnp.maximum(batch.t, 1.0 / T), batch.labels

    def fpe_points(self, key, data: TrainData, config, t=None):
        """``(x, t, labels)``: eq. 29's noisy inputs at random steps, or at the steps nearest ``(batch,)`` times
        ``t``, from trajectories in memory."""
        count, T, current = data.pool
        batch = points(data, self.fpe_draw(key, count, T, current, config, t))
        return self.fpe_inputs(key, batch, config, T, t)

    def denoise(self, net, noisy, labels, key, config):
        return sampling.denoise(self.score(net, labels, config), noisy, key, self._bound_sde(), config.sampler)


@dataclasses.dataclass(frozen=True)
class FPRegularised:
    """A training objective plus ``R_FP`` (:func:`fpjax.diffusion.score_fpe.regulariser`, FP-Diffusion eq. 19) at the
    objective's own noisy inputs: ``loss + regulariser``, under the objective's SDE.

    ``objective``: :class:`EmbeddedDenoising` or :class:`fpjax.learn.ddpm.DDPM` (any objective with
    ``fpe_points``); the score, the check (``denoise``) and the SDE are the objective's.
    """

    objective: object
    reg: Regulariser = Regulariser()

    @property
    def sde(self):
        return self.objective.sde

    def with_sde(self, sde: sde_lib.SDE) -> FPRegularised:
        return dataclasses.replace(self, objective=self.objective.with_sde(sde))

    def check_weights(self, T: int) -> None:
        """The wrapped objective's check (:meth:`EmbeddedDenoising.check_weights`)."""
        self.objective.check_weights(T)

    def score(self, net, labels, config):
        return self.objective.score(net, labels, config)

    def fpe_draw(self, key, count: int, T: int, current, config, t=None) -> Draw:
        return self.objective.fpe_draw(key, count, T, current, config, t)

    def fpe_inputs(self, key, batch: Batch, config, T: int, t=None):
        return self.objective.fpe_inputs(key, batch, config, T, t)

    def fpe_points(self, key, data: TrainData, config, t=None):
        return self.objective.fpe_points(key, data, config, t)

    def draw(self, key, count: int, T: int, current, config) -> Draw:
        """The regulariser's points (``config.batch_size`` of them) and then the objective's."""
        k_loss, k_points, _ = jax.random.split(key, 3)
        first = self.objective.fpe_draw(k_points, count, T, current, config)
        second = self.objective.draw(k_loss, count, T, current, config)
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, second)

    def batch_loss(self, net, key, batch: Batch, config, T: int):
        k_loss, k_points, k_reg = jax.random.split(key, 3)
        fpe_batch = jax.tree.map(lambda a: a[: config.batch_size], batch)
        loss_batch = jax.tree.map(lambda a: a[config.batch_size :], batch)
        x, t, labels = self.objective.fpe_inputs(k_points, fpe_batch, config, T)
        score = lambda x, t, labels: self.score(net, labels, config)(x, t)
        if self.objective.sde is None:
            raise ValueError(f"{self.objective} has no SDE yet: train() binds it (see EmbeddedDenoising)")
        penalty = regulariser(score, x, t, self.objective.sde, k_reg, self.reg, labels)
        return self.objective.batch_loss(net, k_loss, loss_batch, config, T) + penalty

    def loss(self, net, key, data: TrainData, config):
        """:meth:`batch_loss` on trajectories in memory."""
        return loss_in_memory(self, net, key, data, config)

    def denoise(self, net, noisy, labels, key, config):
        return self.objective.denoise(net, noisy, labels, key, config)
