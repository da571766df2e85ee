"""Batched pre-computation for many images: vmap, projection, sharding, streaming to a store.

``precompute`` solves the log-density FP equation for every channel of every
image. Images are processed in groups of ``cycle`` (one seed each when the
cross-matrix projection is on) and, inside a group, in batches of
``batch_size`` that go through one jitted ``vmap`` (over images and
channels), sharded over ``jax.devices()`` when there are several. Results
stay in memory or stream to an :class:`fpjax.batch.store.FPStore`, which makes the
run resumable.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fpjax.batch.store import STATS, FPStore
from fpjax.solver import log_density as fp
from fpjax.solver import projection as krylov
from fpjax.solver.initial import initial_log_density, validate_image

STAT_NAMES = tuple(STATS)


@dataclasses.dataclass
class PrecomputeResult:
    """What :func:`precompute` returns.

    Attributes:
      m: ``(N, T+1, H, W, C)`` log-densities (a broadcast view when one density
        serves all channels), or the store's zarr array ``(N, T+1, H, W, K)``.
      stats: ``outer_iterations``, ``linear_iterations``, ``residual``,
        ``converged``, each ``(N, K, T)`` (``K = 1`` for a shared density).
      seeds: ``(N,)`` index of each image's seed (``-1`` without projection).
      batch_seconds: wall time of each batch; ``seconds`` the whole run's.
      skipped: images found finished in the store.
    """

    m: object
    stats: dict
    seeds: np.ndarray
    batch_seconds: list
    seconds: float
    skipped: int
    store: FPStore | None = None


def _metadata(config, density, per_channel, projection, dim, cycle, ids, shape, dtype):
    return dict(
        config={k: v for k, v in dataclasses.asdict(config).items() if k != "drift"},
        drift=None if config.drift is None else repr(config.drift),
        density=density,
        per_channel=per_channel,
        projection=projection,
        dim=dim if projection != "off" else None,
        cycle=cycle if projection != "off" else None,
        ids=list(ids),
        shape=list(shape),
        dtype=str(dtype),
    )


@functools.partial(jax.jit, static_argnames=("config", "mode"))
def _solve_batch(m0s, bases, config, mode):
    """``m0s`` ``(B, K, H, W)``, bases with leading ``K`` (or ``None``) -> FPSolution with leading ``(B, K)``."""
    mode = mode if bases is not None else "off"  # a seed is solved without bases
    per_field = lambda m0, b: krylov.solve_projected(m0, b, config, mode)  # noqa: E731
    over_channels = jax.vmap(per_field, in_axes=(0, 0 if bases is not None else None))
    return jax.vmap(over_channels, in_axes=(0, None))(m0s, bases)


@functools.partial(jax.jit, static_argnames=("density", "per_channel"))
def _initial_fields(images, density, per_channel):
    return jax.vmap(lambda x: initial_log_density(x, density, per_channel=per_channel))(images)


def _shard(batch):
    """Place a batch over all devices along its first axis (it must divide evenly)."""
    devices = jax.local_devices()  # each process shards its own batches (multi-host: its share of the images)
    if len(devices) == 1:
        return batch
    mesh = Mesh(np.array(devices), ("batch",))
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec("batch")))


def _thumbnails(images, side: int = 8):
    n, h, w, c = images.shape
    rows = np.linspace(0, h, side + 1).astype(int)
    cols = np.linspace(0, w, side + 1).astype(int)
    return np.stack(
        [
            images[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].mean(axis=(1, 2))
            for i in range(side)
            for j in range(side)
        ],
        axis=1,
    ).reshape(n, -1)


def kmeans(points, k: int, iterations: int = 25, seed: int = 0):
    """Plain Lloyd k-means with k-means++ initialisation; returns ``(labels, centres)``."""
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(points))])
    centres = np.asarray(centres)
    for _ in range(iterations):
        labels = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        new = np.asarray([points[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return labels, centres


def seed_groups(images, projection: str, cycle: int, seeds: str = "cycle"):
    """Index arrays, one per group; with a projection, each group's first index is its seed."""
    n = len(images)
    if projection == "off":
        return [np.arange(n)]
    if seeds == "cycle":
        return [np.arange(s, min(s + cycle, n)) for s in range(0, n, cycle)]
    if seeds != "cluster":
        raise ValueError(f"seeds must be 'cycle' or 'cluster', got {seeds!r}")
    points = _thumbnails(np.asarray(images))
    labels, centres = kmeans(points, max(1, -(-n // cycle)))
    groups = []
    for j in range(len(centres)):
        members = np.flatnonzero(labels == j)
        if len(members):
            seed = members[np.argmin(((points[members] - centres[j]) ** 2).sum(-1))]
            groups.append(np.concatenate([[seed], members[members != seed]]))
    return groups


def _difficulty(m0s):
    """Cheap proxy for the work of a field (its gradient energy), to batch similar images together."""
    return np.asarray(jnp.sum(jnp.diff(m0s, axis=-1) ** 2, axis=(-3, -2, -1)))


def precompute(
    images,
    config: fp.FPConfig | None = None,
    *,
    projection: str = "off",
    dim: int = 20,
    cycle: int = 50,
    batch_size: int = 16,
    store=None,
    ids=None,
    density: str = "position_kde",
    per_channel=None,
    progress=None,
    on_failure: str = "warn",
    process: tuple[int, int] | None = None,
    seeds: str = "cycle",
) -> PrecomputeResult:
    """Solve the FP equation for every channel of NHWC ``images`` in ``[0, 1]``.

    Args:
      images: ``(N, H, W, C)``.
      config: :class:`fpjax.FPConfig` (default ``FPConfig()``).
      projection: ``"off"`` (each step warm-starts from the predictor),
        ``"initial_guess"`` (cross-matrix projection, the paper's method),
        ``"approximate"`` (projected solution, no iterations; its error shows
        in ``residual``) or ``"galerkin"``.
      dim, cycle: Krylov basis size and images per seed (the paper's 20, 50).
      batch_size: images per vmapped batch (rounded up to a multiple of the
        device count; the last batch is padded).
      store: path of a zarr store to stream to (resumable) or ``None``.
      ids: image identifiers for the store (default ``0..N-1``).
      density, per_channel: initial log-density (see :func:`fpjax.initial_log_density`).
      progress: a callable ``progress(done_images, total_images)`` or ``None``.
      on_failure: ``"raise"``, ``"warn"`` or ``"ignore"`` for unconverged steps.
      seeds: ``"cycle"`` (a new seed every ``cycle`` images, the paper's
        scheme) or ``"cluster"`` (k-means on 8x8 thumbnails into
        ``ceil(N / cycle)`` clusters, the image nearest each centre is its
        seed: the paper's proposed remedy for diverse datasets).
      process: ``(index, count)`` of this process among several sharing the
        work into one store (default ``(jax.process_index(),
        jax.process_count())``, i.e. what ``jax.distributed.initialize`` set
        up). Process ``p`` takes every ``count``-th batch; process 0 creates
        the store and the others wait for it.
    """
    config = fp.FPConfig() if config is None else config
    if projection not in krylov.MODES:
        raise ValueError(f"projection must be one of {krylov.MODES}, got {projection!r}")
    if projection != "off" and config.scheme != "log_density":
        raise ValueError(
            f"projection={projection!r} accelerates the log-density scheme's nonlinear steps; "
            f"scheme={config.scheme!r} has none to accelerate: use projection='off'"
        )
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC, got shape {images.shape}")
    for i, image in enumerate(images):
        try:
            validate_image(image)
        except ValueError as error:
            raise ValueError(f"image {i}: {error}") from None
    n, height, width, channels = images.shape
    process_index, process_count = (jax.process_index(), jax.process_count()) if process is None else process
    if process_count > 1 and store is None:
        raise ValueError("several processes share their work through a store: pass store=PATH")
    ids = list(range(n)) if ids is None else list(ids)
    start = time.perf_counter()

    m0s = _initial_fields(jnp.asarray(images), density, per_channel)
    if m0s.ndim == 3:
        m0s = m0s[:, None]  # (N, K, H, W)
    k_fields = m0s.shape[1]
    T = config.T

    fpstore = None
    if store is not None:
        meta = _metadata(config, density, per_channel, projection, dim, cycle, ids, (height, width), m0s.dtype)
        fpstore = FPStore.open(
            store,
            metadata=meta,
            n=n,
            T=T,
            shape=(height, width),
            channels=k_fields,
            dtype=str(m0s.dtype),
            create=process_index == 0,
        )
        done = fpstore.done()
        m_out = None
        stats = None
    else:
        done = np.zeros(n, bool)
        m_out = np.zeros((n, T + 1, height, width, k_fields), m0s.dtype)
        stats = {name: np.zeros((n, k_fields, T), STATS[name] or m0s.dtype) for name in STAT_NAMES}
    skipped = int(done.sum())

    def save(index, m, sol_stats):  # m (K, T+1, H, W)
        m = np.moveaxis(np.asarray(m), 0, -1)
        if fpstore is not None:
            fpstore.write(index, m, sol_stats)
        else:
            m_out[index] = m
            for name in STAT_NAMES:
                stats[name][index] = sol_stats[name]

    n_devices = len(jax.local_devices())
    batch_size = -(-batch_size // n_devices) * n_devices
    seed_of = np.full(n, -1)
    batch_seconds = []
    finished = skipped
    groups = seed_groups(images, projection, cycle, seeds)
    batch_number = -1
    for group_number, members in enumerate(groups):
        n_batches = -(-(len(members) - (projection != "off")) // batch_size)
        owned = [(batch_number + 1 + b) % process_count == process_index for b in range(n_batches)]
        if not any(owned) and not (projection != "off" and group_number % process_count == process_index):
            batch_number += n_batches
            continue
        bases = None
        if projection != "off":
            seed = members[0]
            seed_of[members] = seed
            if done[seed] and fpstore is not None:
                m_seed = jnp.moveaxis(jnp.asarray(fpstore.m[seed]), -1, 0)
            else:
                sol = _solve_batch(m0s[seed][None], None, config, "off")
                m_seed = sol.m[0]
                if group_number % process_count == process_index:  # one writer per seed
                    save(seed, m_seed, {name: np.asarray(getattr(sol, name)[0]) for name in STAT_NAMES})
                    done[seed] = True
                    finished += 1
            bases = jax.vmap(lambda m, cfg=config: krylov.seed_bases(m, cfg, dim))(m_seed)
            members = members[1:]
        # similar images share a batch, so vmap's slowest member stays near the mean
        members = members[np.argsort(_difficulty(m0s[members]), kind="stable")] if len(members) else members
        for batch_start in range(0, len(members), batch_size):
            batch = members[batch_start : batch_start + batch_size]
            batch_number += 1
            if batch_number % process_count != process_index or done[batch].all():
                continue
            padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch))])
            tick = time.perf_counter()
            sol = _solve_batch(_shard(m0s[padded]), bases, config, projection)
            sol = jax.tree_util.tree_map(np.asarray, sol)
            batch_seconds.append(time.perf_counter() - tick)
            for row, index in enumerate(batch):
                save(index, sol.m[row], {name: getattr(sol, name)[row] for name in STAT_NAMES})
                if not done[index]:
                    finished += 1
                done[index] = True
            if progress is not None:
                progress(finished, n)

    if fpstore is not None:
        stats = {name: fpstore.stats(name) for name in STAT_NAMES}
        m_result = fpstore.m
    else:
        m_result = m_out if k_fields == channels else np.broadcast_to(m_out, m_out.shape[:-1] + (channels,))
    result = PrecomputeResult(m_result, stats, seed_of, batch_seconds, time.perf_counter() - start, skipped, fpstore)
    _report_failures(result, ids, on_failure, projection)
    return result


def _report_failures(result, ids, on_failure, projection):
    if on_failure == "ignore" or projection == "approximate":
        return
    converged = result.stats["converged"].all(axis=(1, 2))
    if converged.all():
        return
    bad = [ids[i] for i in np.flatnonzero(~converged)]
    message = f"{len(bad)} image(s) had unconverged FP steps: {bad[:10]}{' ...' if len(bad) > 10 else ''}"
    if on_failure == "raise":
        raise fp.ConvergenceError(message)
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=3)
