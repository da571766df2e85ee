"""Batched pre-computation for many images: vmap, projection, sharding, streaming to a store.

``precompute`` solves the log-density FP equation for every channel of every
image. Images are processed in groups of ``cycle`` (one seed each when the
cross-matrix projection is on) and, inside a group, in batches of
``batch_size`` that go through one jitted ``vmap`` (over images and
channels), sharded over ``jax.devices()`` when there are several. Results
stay in memory or stream to an :class:`fpjax.batch.store.FPStore`, which makes the
run resumable.

:func:`precompute` plans the work (:func:`fpjax.batch.seeding.seed_groups`,
then :func:`plan_batches`: batches of similar images, each process's share)
and writes every solved batch to a sink with one interface, in memory
(:class:`fpjax.batch.store.MemoryStore`) or on disk (``FPStore``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from fpjax import devices, memory
from fpjax.batch.seeding import SEED_RULES, seed_groups
from fpjax.batch.store import STATS, FPStore, MemoryStore, StoreDamagedError, listed
from fpjax.data.sets import is_image_set
from fpjax.provenance import jsonable
from fpjax.solver import projection as krylov
from fpjax.solver.initial import check_image, check_images, initial_log_density
from fpjax.solver.problem import ConvergenceError, FPConfig, function_digest
from fpjax.solver.solve import channels_last

STAT_NAMES = tuple(STATS)
ON_FAILURE = ("raise", "warn", "ignore")
"""What :func:`precompute` does about images with unconverged steps."""
FINISH_WAIT_SECONDS = 24 * 3600.0
"""How long a process of a ``jax.distributed`` run that has written its share waits for the others' (their shares
may take longer: a dead process is noticed sooner, through JAX's heartbeats)."""


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
      skipped: images found finished (and intact) in the store.
      repaired: finished images of the store that failed verification (a damaged, missing or altered
        chunk) and were recomputed (by this process, or by the one whose share they are in).
    """

    m: object
    stats: dict
    seeds: np.ndarray
    batch_seconds: list
    seconds: float
    skipped: int
    store: FPStore | None = None
    repaired: int = 0


def _metadata(config, *, density, per_channel, projection, dim, cycle, batch_size, ids, shape, dtype):
    """The settings a store's results depend on; reopening it with others raises StoreMismatchError."""
    settings = jsonable(config)
    functions = function_digest(config, shape)  # a function's repr holds its address: record its values instead
    settings.update({"g": {"function": functions["g"]}} if "g" in functions else {})
    drift = settings.pop("drift")  # beside the config, as stores written before provenance.jsonable have it
    drift = {"function": functions["drift"]} if "drift" in functions else drift
    return dict(
        config=settings,
        drift=drift,
        density=density,
        per_channel=per_channel,
        projection=projection,
        dim=dim if projection != "off" else None,
        cycle=cycle if projection != "off" else None,
        batch_size=batch_size,  # results differ in their last bits between batch sizes: a resume keeps it
        ids=list(ids),
        shape=list(shape),
        dtype=str(dtype),
    )


@functools.partial(jax.jit, static_argnames=("config", "mode"))
def _solve_batch(m0s, bases, config, mode):
    """``m0s`` ``(B, K, H, W)``, bases with leading ``K`` (or ``None``) -> FPSolution in the store's layout:
    ``m`` ``(B, T+1, H, W, K)``, the statistics ``(B, K, T)``."""
    mode = mode if bases is not None else "off"  # a seed is solved without bases
    per_field = lambda m0, b: krylov.solve_projected(m0, b, config, mode)  # noqa: E731
    over_channels = jax.vmap(per_field, in_axes=(0, 0 if bases is not None else None))
    return channels_last(jax.vmap(over_channels, in_axes=(0, None))(m0s, bases))


@functools.partial(jax.jit, static_argnames=("density", "per_channel"))
def _initial_fields(images, density, per_channel):
    return jax.vmap(lambda x: initial_log_density(x, density, per_channel=per_channel))(images)


@functools.lru_cache(maxsize=16)
def _sharded_solver(config, mode, n_devices: int):
    """``_solve_batch`` run by every local device on its own share of the batch (``shard_map``).

    Under a plain jitted ``vmap`` with a sharded batch, XLA puts a cross-device
    all-reduce in the condition of every ``while_loop``, so every device iterates
    until the slowest image of the whole batch converges; here each device's
    loops see only its own images. The seed bases are replicated on every device.
    """
    mesh = Mesh(np.array(jax.local_devices()[:n_devices]), ("batch",))
    local = lambda m0s, bases: _solve_batch(m0s, bases, config, mode)  # noqa: E731
    spec = PartitionSpec("batch")
    # check_vma off: the solver's loops start from replicated constants (zeros, counters) that JAX would
    # otherwise ask to be cast to "varying" by hand; every value really is per-device here
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, PartitionSpec()), out_specs=spec, check_vma=False))


def _solve_on_devices(m0s, bases, config, mode):
    """Dispatch one batch (its length a multiple of the local device count); returns device arrays at once."""
    local = jax.local_devices()  # each process shards its own batches (multi-host: its share of the images)
    if len(local) == 1:
        return _solve_batch(m0s, bases, config, mode)
    return _sharded_solver(config, mode if bases is not None else "off", len(local))(m0s, bases)


def difficulty(m0s) -> np.ndarray:
    """``(N,)`` a cheap proxy for the work of each of ``(N, K, H, W)`` fields (its gradient energy), to batch
    similar images together."""
    return np.asarray(jnp.sum(jnp.diff(m0s, axis=-1) ** 2, axis=(-3, -2, -1)))


class InitialFields:
    """The ``(N, K, H, W)`` initial log-densities of ``images``, read by image index.

    For an array they are computed once, together; for an image set (:func:`fpjax.data.sets.is_image_set`)
    each read computes the fields of the images it names, so that nothing holds the set. Opening a set reads
    it once, :data:`CHUNK` images at a time, to check every image (naming it) and to measure each one's
    :func:`difficulty` before any solve.
    """

    CHUNK = 256

    def __init__(self, images, density: str, per_channel):
        self.images, self.density, self.per_channel = images, density, per_channel
        self.lazy = is_image_set(images)
        if self.lazy:
            chunks = [np.arange(s, min(s + self.CHUNK, len(images))) for s in range(0, len(images), self.CHUNK)]
            self.difficulty = np.concatenate([difficulty(self._checked(rows)) for rows in chunks])
            first = self._fields(images[np.arange(1)])
        else:
            self._all = self._fields(jnp.asarray(images))
            self.difficulty, first = difficulty(self._all), self._all
        self.shape, self.dtype = (len(images),) + tuple(first.shape[1:]), first.dtype

    def _fields(self, images):
        fields = _initial_fields(jnp.asarray(images), self.density, self.per_channel)
        return fields[:, None] if fields.ndim == 3 else fields  # (B, K, H, W)

    def _checked(self, rows):
        images = np.asarray(self.images[rows])
        names = getattr(self.images, "names", None)
        for row, image in zip(rows, images, strict=True):
            try:
                check_image(image)
            except ValueError as error:
                raise ValueError(f"image {names[row] if names else row}: {error}") from None
        return self._fields(images)

    def __getitem__(self, rows):
        """``(len(rows), K, H, W)`` fields of the images ``rows`` (an integer array), on the device."""
        return self._fields(self.images[np.asarray(rows)]) if self.lazy else self._all[rows]


def precompute(
    images,
    config: FPConfig | None = None,
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
    on_batch=None,
    repair: bool = True,
) -> PrecomputeResult:
    """Solve the FP equation for every channel of ``(N, H, W, C)`` ``images`` in ``[0, 1]``.

    Args:
      config: :class:`fpjax.FPConfig` (default ``FPConfig()``).
      projection: ``"off"`` (each step warm-starts from the predictor), ``"initial_guess"``
        (cross-matrix projection, the paper's method), ``"approximate"`` (projected solution, no
        iterations; its error shows in ``residual``) or ``"galerkin"``.
      dim: the projection's Krylov basis size, left by each seed for its images (the paper's 20; positive).
      cycle: images per seed under ``seeds="cycle"`` (the paper's 50; positive): a seed solved in full every ``cycle``.
      batch_size: images per vmapped batch (rounded up to a multiple of the device count; the last
        batch is padded). Results differ in their last bits between batch sizes: a store records it.
      store: path of a zarr store to stream to or ``None``; ``ids``: its image names. Rerunning resumes;
        finished images are verified first and damaged ones recomputed (``result.repaired``; with
        ``repair=False`` refused: :class:`fpjax.batch.store.StoreDamagedError`); one
        writer at a time (:class:`fpjax.batch.store.StoreLockedError`).
      density, per_channel: initial log-density (see :func:`fpjax.initial_log_density`).
      progress: ``progress(done_images, total_images)`` after each batch, or ``None``.
      on_failure: ``"raise"``, ``"warn"`` or ``"ignore"`` for unconverged steps.
      process: ``(index, count)`` of this process among several sharing the work into one store
        (default: what ``jax.distributed.initialize`` set up). Process ``p`` takes every
        ``count``-th batch; process 0 creates the store and the others wait for it.
      seeds: ``"cycle"`` (a seed every ``cycle`` images, the paper's scheme) or ``"cluster"``
        (k-means on 8x8 thumbnails, :func:`fpjax.batch.seeding.seed_groups`: the paper's remedy
        for diverse datasets).
      on_batch: ``on_batch(indices, stats, seconds)`` after each batch written (a seed is a batch of
        one): the images' indices, their statistics ``{name: (B, K, T)}`` and the batch's wall time.
    """
    config = FPConfig() if config is None else config
    process = (jax.process_index(), jax.process_count()) if process is None else process
    _check_settings(config, projection, on_failure, seeds, several_without_store=process[1] > 1 and store is None)
    images, ids = _checked_inputs(images, ids, config, (dim, cycle, batch_size), store is None, per_channel)
    start = time.perf_counter()
    m0s = InitialFields(images, density, per_channel)
    settings = dict(density=density, per_channel=per_channel, projection=projection, dim=dim, cycle=cycle)
    with _open_sink(store, config, m0s, ids, dict(settings, batch_size=batch_size), process) as sink:
        done, damaged = _verified_done(sink, ids, repair)
        skipped = int(done.sum())
        groups = seed_groups(images, projection, cycle, seeds)
        batch_size = -(-batch_size // len(jax.local_devices())) * len(jax.local_devices())
        plans = plan_batches(m0s.difficulty, groups, projection=projection, batch_size=batch_size, process=process)
        sink.forget(sorted(set(damaged) & _owned(plans)))  # cleared first: a repair cut short is redone next time
        solve = functools.partial(_solve_plan, m0s=m0s, sink=sink, done=done, config=config, projection=projection,
                                  dim=dim, batch_size=batch_size, progress=progress, on_batch=on_batch)  # fmt: skip
        batch_seconds = _solve_share(plans, solve, process)
    m = _all_channels(sink.m, images.shape[-1]) if store is None else sink.m
    seconds, seed_of = time.perf_counter() - start, _seed_of(groups, len(images), projection)
    result = PrecomputeResult(m, sink.all_stats(done), seed_of, batch_seconds, seconds, skipped,
                              None if store is None else sink, len(damaged))  # fmt: skip
    _report_failures(result, ids, on_failure, projection)
    return result


def _open_sink(store, config: FPConfig, m0s, ids, settings: dict, process):
    """A :class:`MemoryStore` (``store=None``) or the :class:`FPStore` at ``store``, for ``(N, K, H, W)`` ``m0s``.

    Process 0 creates the store; the processes of a multi-process run share its writer lock, a lone
    process holds it alone. Under ``jax.distributed`` the others wait for it at a barrier, else they poll for it.
    """
    n, channels, height, width = m0s.shape
    if store is None:
        return MemoryStore(n, config.T, (height, width), channels, m0s.dtype)
    metadata = _metadata(config, ids=ids, shape=(height, width), dtype=m0s.dtype, **settings)
    open_store = functools.partial(FPStore.open, store, metadata=metadata, n=n, T=config.T, shape=(height, width),
                                   channels=channels, dtype=str(m0s.dtype),
                                   lock="shared" if process[1] > 1 else "exclusive")  # fmt: skip
    if not _synchronized(process):  # a lone process, or processes started by hand: the others poll for the store
        return open_store(create=process[0] == 0)
    if process[0] == 0:
        sink = open_store(create=True)
        devices.barrier("store created")
        return sink
    devices.barrier("store created")  # process 0 has created it (or failed, and this barrier says so)
    return open_store(create=False, wait_seconds=0.0)


def _solve_share(plans, solve, process) -> list[float]:
    """Each batch's seconds of this process's ``plans``; under ``jax.distributed``, once every process's share is
    written (no process reads the whole store before)."""
    batch_seconds = [seconds for plan in plans for seconds in solve(plan)]
    if _synchronized(process):
        devices.barrier("precompute finished", timeout=FINISH_WAIT_SECONDS)
    return batch_seconds


def _synchronized(process) -> bool:
    """Whether ``process`` is this process of a ``jax.distributed`` run: its processes wait for each other through
    JAX's runtime (:func:`fpjax.devices.barrier`)."""
    return process[1] > 1 and tuple(process) == (jax.process_index(), jax.process_count())


def _verified_done(sink, ids, repair: bool = True):
    """``(done, damaged)``: the images finished and intact, and ``{index: why}`` of those that fail verification.

    Raises:
      StoreDamagedError: some fail and ``repair`` is false.
    """
    done = sink.done()
    damaged = sink.verify(done)
    if damaged and not repair:
        raise StoreDamagedError(sink.path, {ids[i]: why for i, why in sorted(damaged.items())})
    if damaged:
        done[list(damaged)] = False
        names = [ids[i] for i in sorted(damaged)]
        warnings.warn(
            f"{len(damaged)} finished image(s) of the store at {sink.path} failed verification and are recomputed: "
            f"{listed(names)} (image {names[0]!r}: {damaged[min(damaged)]})",
            RuntimeWarning,
            stacklevel=3,
        )
    return done, damaged


def _owned(plans) -> set:
    """The images a process writes: its batches' members and the seeds it owns."""
    owned = {int(i) for plan in plans for batch in plan.batches for i in batch}
    return owned | {int(plan.seed) for plan in plans if plan.writes_seed}


def _all_channels(m, channels: int):
    """``(N, T+1, H, W, K)`` as ``C`` channels: a broadcast view where one density serves them all."""
    return m if m.shape[-1] == channels else np.broadcast_to(m, m.shape[:-1] + (channels,))


def _seed_of(groups, n: int, projection: str) -> np.ndarray:
    """``(N,)`` each image's seed: its group's first index (``-1`` without projection)."""
    seed_of = np.full(n, -1)
    for group in groups if projection != "off" else ():
        seed_of[group] = group[0]
    return seed_of


def _check_settings(config: FPConfig, projection: str, on_failure: str, seeds: str, several_without_store: bool):
    if several_without_store:
        raise ValueError("several processes share their work through a store: pass store=PATH")
    if projection not in krylov.MODES:
        raise ValueError(f"projection must be one of {krylov.MODES}, got {projection!r}")
    if projection != "off" and config.scheme.name != "log_density":
        raise ValueError(
            f"projection={projection!r} accelerates the log-density scheme's nonlinear steps; "
            f"scheme={config.scheme.name!r} has none to accelerate: use projection='off'"
        )
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if seeds not in SEED_RULES:
        raise ValueError(f"seeds must be one of {SEED_RULES}, got {seeds!r}")


def _checked_inputs(images, ids, config: FPConfig, counts, in_memory: bool, per_channel):
    """The counts ``(dim, cycle, batch_size)`` positive, the images checked (:func:`_checked_images`), their ids
    (:func:`_checked_ids`), and room for them (:func:`check_memory`)."""
    dim, cycle, batch_size = counts
    _check_counts(dim=dim, cycle=cycle, batch_size=batch_size)
    images = images if is_image_set(images) else _checked_images(images)  # a set's images: as they are read
    check_memory(images.shape, config, batch_size=batch_size, in_memory=in_memory, per_channel=per_channel,
                 dtype=getattr(images, "dtype", np.float32))  # fmt: skip
    return images, _checked_ids(ids, len(images))


def _check_counts(**counts) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _checked_ids(ids, count: int) -> list:
    """``ids`` as a list of ``count`` distinct names (``0..count-1`` when ``None``), or a one-line ValueError."""
    ids = list(range(count)) if ids is None else list(ids)
    if len(ids) != count:
        raise ValueError(f"ids has {len(ids)} names for {count} images: give one name per image")
    repeated = [name for name, times in collections.Counter(ids).items() if times > 1]
    if repeated:
        raise ValueError(f"ids must name each image once: {repeated[:3]} appear more than once")
    return ids


def check_memory(
    shape, config: FPConfig, *, batch_size: int = 16, in_memory: bool = True, per_channel=None, dtype=np.float32
) -> None:
    """Refuse, before any work, a :func:`precompute` of images of ``shape`` ``(N, H, W, C)`` whose batch cannot fit
    on the device, or whose results cannot fit on the host (``in_memory``: no store, every trajectory held there),
    naming the size and the fix (:func:`fpjax.memory.require`). The command line calls it with the images'
    header sizes, before decoding them."""
    count, height, width, channels = shape
    fields = 1 if per_channel is False else channels  # a shared density is one field: the estimate is an upper bound
    one = memory.trajectory_bytes(config.T, (height, width), fields, dtype)
    devices = len(jax.local_devices())
    per_device = -(-batch_size // devices)  # every batch is padded to batch_size rounded up to the devices
    what = f"a batch of {per_device} images {height}x{width} with T={config.T}" + (" per device" if devices > 1 else "")
    memory.require(2 * per_device * one, what, "lower batch_size (--batch-size), T or the image size (--size)")
    if in_memory:
        every = memory.trajectory_bytes(config.T, (height, width), count * channels, dtype)
        what = f"the trajectories of {count} images {height}x{width} with T={config.T}"
        fix = "stream them to a store (store=PATH, --store), or lower T or the image size"
        memory.require(every, what, fix, device=False)


def _checked_images(images) -> np.ndarray:
    """The NHWC batch checked and promoted by :func:`fpjax.solver.initial.check_images` (one rule set for
    every entry point), as NumPy."""
    return np.asarray(check_images(images))


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """One seed group's share of the work for one process (see :func:`plan_batches`).

    Attributes:
      seed: index of the group's seed (projection on), solved alone first; ``None`` without projection.
      writes_seed: whether this process writes the seed's solution (one writer per seed).
      batches: this process's batches of the group's other images, index arrays of at most
        ``batch_size`` images in order of difficulty (not padded).
    """

    seed: int | None
    writes_seed: bool
    batches: tuple


def plan_batches(work, groups, *, projection: str, batch_size: int, process=(0, 1)) -> list[GroupPlan]:
    """Split seed groups into batches of similar images and keep this process's share.

    Batches are numbered across all groups; process ``index`` of ``count``
    takes every batch whose number is ``index`` modulo ``count`` and writes
    the seed of every group whose number is. Groups with nothing for this
    process are left out.

    Args:
      work: ``(N,)`` each image's expected work (:func:`difficulty` of its initial fields), which orders the
        batches.
      groups: index arrays from :func:`fpjax.batch.seeding.seed_groups` (first index: the seed).
      projection: a mode of :data:`fpjax.solver.projection.MODES`; ``"off"`` has no seeds.
      batch_size: images per batch.
      process: ``(index, count)``.
    """
    index, count = process
    plans, first_batch = [], 0
    for number, members in enumerate(groups):
        seed, members = (int(members[0]), members[1:]) if projection != "off" else (None, members)
        if len(members):  # similar images share a batch, so vmap's slowest member stays near the mean
            members = members[np.argsort(np.asarray(work)[members], kind="stable")]
        batches = [members[s : s + batch_size] for s in range(0, len(members), batch_size)]
        owned = tuple(b for j, b in enumerate(batches) if (first_batch + j) % count == index)
        first_batch += len(batches)
        writes_seed = seed is not None and number % count == index
        if owned or writes_seed:
            plans.append(GroupPlan(seed, writes_seed, owned))
    return plans


def _solve_plan(plan, *, m0s, sink, done, config, projection, dim, batch_size, progress, on_batch) -> list:
    """Solve one group's planned batches (and its seed), writing each to ``sink``; returns the batches' seconds."""
    pending = [batch for batch in plan.batches if not done[batch].all()]
    bases = _seed_bases(plan, pending, m0s, sink, done, config, dim, on_batch)

    def dispatch(batch):  # returns at once: the devices work while the previous batch is written
        padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch))])
        tick = time.perf_counter()
        return batch, _solve_on_devices(m0s[padded], bases, config, projection), tick

    seconds, in_flight = [], None
    for batch in pending + [None]:
        dispatched = dispatch(batch) if batch is not None else None
        if in_flight is not None:  # a batch's seconds run from its dispatch to its write (batches overlap)
            previous, solution, tick = in_flight
            seconds.append(_write(sink, done, previous, jax.tree_util.tree_map(np.asarray, solution), on_batch, tick))
            if progress is not None:
                progress(int(done.sum()), len(done))
        in_flight = dispatched
    return seconds


def _seed_bases(plan, pending, m0s, sink, done, config, dim, on_batch):
    """Solve the group's seed (read it where finished) and write it if this process owns it.

    Returns the seed's Krylov bases, one per channel, or ``None`` (no seed, or no batch pending).
    """
    if plan.seed is None:
        return None
    if done[plan.seed]:
        m_seed = jnp.asarray(sink.m[plan.seed])  # (T+1, H, W, K), as written
    elif pending or plan.writes_seed:
        tick = time.perf_counter()
        sol = _solve_batch(m0s[np.array([plan.seed])], None, config, "off")
        if plan.writes_seed:
            _write(sink, done, np.array([plan.seed]), jax.tree_util.tree_map(np.asarray, sol), on_batch, tick)
        m_seed = sol.m[0]
    if not pending:
        return None
    return jax.vmap(lambda m: krylov.seed_bases(m, config, dim), in_axes=-1)(m_seed)


def _write(sink, done, batch, sol, on_batch, tick: float) -> float:
    """Write the first ``len(batch)`` rows of a NumPy ``sol`` (``m`` ``(B, T+1, H, W, K)``, statistics
    ``(B, K, T)``); returns the batch's seconds.

    Images of the batch already finished (a batch recomputed for a damaged member) are neither
    rewritten nor passed to ``on_batch``.
    """
    seconds = time.perf_counter() - tick
    rows = np.flatnonzero(~done[batch])
    for row in rows:
        sink.write(batch[row], sol.m[row], {name: getattr(sol, name)[row] for name in STAT_NAMES})
    done[batch] = True
    if on_batch is not None:
        on_batch(batch[rows], {name: getattr(sol, name)[rows] for name in STAT_NAMES}, seconds)
    return seconds


def _report_failures(result, ids, on_failure, projection):
    if on_failure == "ignore" or projection == "approximate":
        return
    converged = result.stats["converged"].all(axis=(1, 2))
    if converged.all():
        return
    bad = [ids[i] for i in np.flatnonzero(~converged)]
    message = f"{len(bad)} image(s) had unconverged FP steps: {listed(bad)}"
    if on_failure == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
