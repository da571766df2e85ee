"""Solving the Fokker-Planck equation of a field or an image, with any scheme (:class:`FPConfig.scheme`).

The public entry points: :func:`solve` (one ``(H, W)`` field), :func:`solve_image` (every channel of an
``(H, W, C)`` image), :func:`solve_images` (an NHWC batch), and :func:`solve_field`, the jitted dispatch
the batch and projection layers call (per field, ``(T+1, H, W)``). Image trajectories keep the channels
last (``docs/conventions.md``): :func:`channels_last` turns per-field solutions stacked over channels into
that layout. The schemes live in :mod:`fpjax.solver.log_density` (the papers') and
:mod:`fpjax.solver.linear` (the density and spectral ones).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from fpjax import memory
from fpjax.solver import linear, log_density
from fpjax.solver.initial import check_image, check_images, initial_log_density
from fpjax.solver.problem import FPConfig, FPSolution, check_solution


@functools.partial(jax.jit, static_argnames=("config", "guess_fn", "approximate"))
def solve_field(m0, g, config: FPConfig, guides=None, guess_fn=None, approximate=False) -> FPSolution:
    """The solution of one ``(H, W)`` field with ``config.scheme`` (jitted; ``config`` static).

    ``g``: ``None`` (``config.g``) or an override. ``guides``, ``guess_fn`` and
    ``approximate`` are the cross-matrix projection's hooks into the
    log-density scheme (:func:`fpjax.solver.log_density.trajectory`); the linear
    schemes have no nonlinear steps to accelerate and refuse them.
    """
    if config.scheme.name == "log_density":
        return log_density.trajectory(m0, g, config, guides, guess_fn, approximate)
    if guess_fn is not None:
        raise ValueError(
            f"the cross-matrix projection accelerates the log-density scheme's nonlinear steps; "
            f"scheme={config.scheme.name!r} has none to accelerate: use projection='off'"
        )
    return linear.solve(m0, g, config)


def channels_last(fields: FPSolution) -> FPSolution:
    """Per-field solutions stacked over channels (every leaf ``(..., C, ...)``: ``m`` ``(..., C, T+1, H, W)``,
    the statistics ``(..., C, T)``) in the image layout: ``m`` ``(..., T+1, H, W, C)``, the statistics as they
    are, ``channel_axis=-1`` (``docs/conventions.md``). Only an axis moves: the values are the same bits."""
    if fields.channel_axis is not None:
        raise ValueError("the solution is in the image layout already (channel_axis=-1)")
    return dataclasses.replace(fields, m=jnp.moveaxis(fields.m, -4, -1), channel_axis=-1)


def _fold_concrete_g(config: FPConfig, g):
    """A concrete ``g`` override of a linear scheme becomes part of the (static) config, so that its
    boundary terms are computed in float64 and the spectral solve keeps only the modes it needs."""
    if g is None or config.scheme.name == "log_density" or isinstance(g, jax.core.Tracer):
        return config, g
    values = np.asarray(g, np.float64)
    return dataclasses.replace(config, g=float(values) if values.ndim == 0 else tuple(values.ravel())), None


def _checked_field(m0):
    """``m0`` as a floating array (integers and float16/bfloat16 become float32), or a one-line ``ValueError``."""
    if jnp.ndim(m0) != 2:
        raise ValueError(
            f"m0 must be one (H, W) field, got shape {jnp.shape(m0)}; use jax.vmap or solve_image for batches"
        )
    if min(jnp.shape(m0)) < 3:
        raise ValueError(f"grid {jnp.shape(m0)} is too small; fpjax needs at least 3x3")
    m0 = jnp.asarray(m0)
    if jnp.iscomplexobj(m0):  # astype would drop the imaginary part silently
        raise ValueError(f"m0 is complex ({m0.dtype}); a log-density is real: pass its real part if that is meant")
    if not jnp.issubdtype(m0.dtype, jnp.floating) or jnp.dtype(m0.dtype).itemsize < 4:
        m0 = m0.astype(jnp.float32)
    if not isinstance(m0, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(m0))):
        raise ValueError(
            f"m0 has {int((~np.isfinite(np.asarray(m0))).sum())} non-finite values; a log-density must be finite "
            "(floor the density before taking its log, as initial_log_density does)"
        )
    return m0


def _check_memory(config: FPConfig, shape, fields: int, dtype) -> None:
    """Refuse, before compiling, trajectories that cannot fit: ``fields`` of ``(T+1, H, W)``, twice (the solve's
    output and its copy where it is read), against the device's available memory (:mod:`fpjax.memory`)."""
    nbytes = 2 * memory.trajectory_bytes(config.T, shape, fields, dtype)
    what = f"a solve of {fields} field{'s' if fields > 1 else ''} {shape[0]}x{shape[1]} with T={config.T}"
    memory.require(nbytes, what, "use a smaller T or grid, or fewer fields at a time (fpjax.precompute streams them)")


def solve(m0, config: FPConfig = FPConfig(), *, g=None, on_failure: str = "raise") -> FPSolution:
    """Solve the log-density Fokker-Planck equation from ``m0`` over ``t in [0, 1]``.

    Jittable, vmappable and differentiable (implicit differentiation through
    each step), with respect to ``m0`` and ``g``.

    Args:
      m0: ``(H, W)`` finite initial log-density (float32 or float64; the solve
        runs in this dtype; integers, float16 and bfloat16 are promoted to float32).
      config: :class:`FPConfig` (static).
      g: optional override of ``config.g``: scalar or ``(T+1,)`` array; pass
        ``g`` here to differentiate with respect to it.
      on_failure: when called outside a transformation, ``"raise"``
        :class:`ConvergenceError` naming the first failed step, ``"warn"``, or
        ``"ignore"``.

    Returns:
      :class:`FPSolution` with ``m`` of shape ``(T+1, H, W)``.
    """
    m0 = _checked_field(m0)
    _check_memory(config, jnp.shape(m0), 1, m0.dtype)
    config, g = _fold_concrete_g(config, g)
    solution = solve_field(m0, g, config)
    return check_solution(solution, config, on_failure)


def solve_image(
    image,
    config: FPConfig = FPConfig(),
    *,
    density: str = "position_kde",
    per_channel=None,
    g=None,
    on_failure: str = "raise",
) -> FPSolution:
    """Solve for every channel of an ``(H, W, C)`` image (checked by :func:`fpjax.solver.initial.check_image`:
    float16 is promoted to float32; channel-first, empty or non-finite images are refused with a ValueError).

    The initial log-density comes from :func:`fpjax.initial_log_density`
    (``density``, ``per_channel``). A shared field is solved once and
    broadcast, so the result always has every channel, last as in the image
    (``docs/conventions.md``): ``m`` is ``(T+1, H, W, C)``, the statistics
    ``(C, T)``; :meth:`FPSolution.score` is then ``(T+1, H, W, C, 2)``.
    Channel ``c`` is ``solve(initial_log_density(image)[c])`` (the shared
    field for every ``c``): ``m[..., c]`` equals its ``m``.
    """
    image = check_image(image, allow_constant=True)  # shape and dtype; the values are checked just below
    channels = jnp.shape(image)[-1]
    if not isinstance(image, jax.core.Tracer):  # under solve_images' vmap: it checked the whole batch
        _check_memory(config, jnp.shape(image)[:2], channels, image.dtype)
    m0 = initial_log_density(image, density, per_channel=per_channel)
    fields = m0[None] if m0.ndim == 2 else m0
    config, g = _fold_concrete_g(config, g)
    solution = jax.vmap(lambda f: solve_field(f, g, config))(fields)
    solution = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (channels,) + a.shape[1:]), solution)
    return check_solution(channels_last(solution), config, on_failure)


def solve_images(images, config: FPConfig = FPConfig(), **kwargs) -> FPSolution:
    """:func:`solve_image` vmapped over an NHWC batch: ``m`` is ``(N, T+1, H, W, C)``, the statistics
    ``(N, C, T)``, as :func:`fpjax.precompute` and its store keep them (``docs/conventions.md``)."""
    on_failure = kwargs.pop("on_failure", "raise")
    images = check_images(images)  # value checks need concrete images: under vmap solve_image cannot make them
    if not isinstance(images, jax.core.Tracer):
        _check_memory(config, jnp.shape(images)[1:3], jnp.shape(images)[0] * jnp.shape(images)[-1], images.dtype)
    solution = jax.vmap(lambda im: solve_image(im, config, on_failure="ignore", **kwargs))(jnp.asarray(images))
    return check_solution(solution, config, on_failure)
