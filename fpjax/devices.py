"""One data-parallel mesh for 1 and many devices, across the hosts of a multi-process run.

Training and sampling place their batches with these functions and let ``jax.jit`` partition the work (JAX's
sharding, not ``pmap``): a batch axis split over the mesh's ``"data"`` axis, everything else (parameters,
optimiser state, the resident trajectories) replicated. With one device the same code runs on a mesh of one.

Every process of a multi-process run (:func:`initialize`, ``jax.distributed``) computes the same draws from the
same keys; each contributes the rows of a batch that its own devices hold (:func:`process_rows`), and
:func:`shard_batch` assembles the global array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import itertools
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import multihost

AXIS = "data"
"""The name of the mesh axis a batch is split along."""

COORDINATOR_VARIABLES = ("FPJAX_COORDINATOR", "FPJAX_NUM_PROCESSES", "FPJAX_PROCESS_ID")
"""Environment variables :func:`initialize` reads where no argument is given (as ``jax.distributed`` itself also
reads its cluster's own, e.g. SLURM's or a Cloud TPU's)."""


WAIT_SECONDS = 600.0
"""How long a process waits at a :func:`barrier` for the others (a dead one is noticed sooner: see
:func:`initialize`'s ``peer_timeout``)."""
PEER_TIMEOUT = 100
"""Seconds without a heartbeat after which JAX's runtime declares a process dead (``jax.distributed``'s default)."""


class PeerLostError(RuntimeError):
    """Another process of a multi-process run died or did not reach a barrier in time (the message says where)."""


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis :data:`AXIS` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("a mesh needs at least one device")
    return Mesh(np.array(devices), (AXIS,))


def batch_sharding(mesh: Mesh, ndim: int, axis: int = 0) -> NamedSharding:
    """The sharding of an ``ndim``-dimensional array whose axis ``axis`` is split over the mesh."""
    spec = [None] * ndim
    spec[axis] = AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(tree, mesh: Mesh):
    """Every leaf of ``tree`` on every device of the mesh (parameters, optimiser state, a resident data set)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def place(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:  # already there (a restored checkpoint)
            return leaf
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    # several processes: every process holds the same values (same keys, same reads), each puts its copy
    return jax.tree.map(place, tree)


def check_divisible(size: int, mesh: Mesh, what: str) -> None:
    """A ``ValueError`` naming ``what`` unless ``size`` splits evenly over the mesh's devices."""
    devices = mesh.devices.size
    if size % devices:
        raise ValueError(
            f"{what} is {size}, which does not split over {devices} devices: make it a multiple of {devices} "
            f"(e.g. {-(-size // devices) * devices})"
        )


def process_rows(size: int, mesh: Mesh) -> slice:
    """The rows ``start:stop`` of a batch of ``size`` that this process's devices hold (all of them in a lone
    process): the mesh's devices are ordered by process, each holding ``size / devices`` consecutive rows."""
    check_divisible(size, mesh, "the batch")
    devices = list(mesh.devices.flat)
    per_device = size // len(devices)
    mine = [i for i, device in enumerate(devices) if device.process_index == jax.process_index()]
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError("this process's devices are not consecutive in the mesh: build it with data_mesh()")
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def shard_batch(tree, mesh: Mesh, axis: int = 0, local: bool = False):
    """Every leaf of ``tree`` with its axis ``axis`` split over the mesh.

    ``local``: the leaves hold only this process's rows (:func:`process_rows`) of the global batch, which is
    assembled across processes; otherwise each leaf is the whole batch, of which each process places its rows.
    """

    def place(leaf):
        leaf = np.asarray(leaf) if not isinstance(leaf, jax.Array) or jax.process_count() > 1 else leaf
        sharding = batch_sharding(mesh, leaf.ndim, axis)
        if jax.process_count() == 1:
            check_divisible(leaf.shape[axis], mesh, "the batch")
            return jax.device_put(leaf, sharding)
        if not local:
            rows = process_rows(leaf.shape[axis], mesh)
            leaf = np.take(leaf, np.arange(rows.start, rows.stop), axis=axis)
        shape = list(leaf.shape)
        shape[axis] *= jax.process_count()
        return jax.make_array_from_process_local_data(sharding, leaf, tuple(shape))

    return jax.tree.map(place, tree)


def spread(tree, mesh: Mesh):
    """A batch every process holds whole (a check's images, a sampler's start): split along axis 0 where its
    length divides over the devices, replicated where it does not (a batch of one)."""
    sizes = {np.shape(leaf)[0] for leaf in jax.tree.leaves(tree)}
    if len(sizes) == 1 and sizes.pop() % mesh.devices.size == 0:
        return shard_batch(tree, mesh)
    return replicated(tree, mesh)


def to_host(tree):
    """Every leaf of ``tree`` as NumPy on every process (a global array gathered from the processes)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)

    def gather(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:  # every process holds all of it
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(gather, tree)


def is_writer() -> bool:
    """Whether this process writes a run's shared outputs (reports, figures, logs): process 0 (a lone one)."""
    return jax.process_index() == 0


def agreed(value: float) -> float:
    """``value`` as process 0 has it: a clock's reading that decides a branch (a time budget) must be the same on
    every process, or they would part ways and wait for each other forever."""
    if jax.process_count() == 1:
        return value
    return float(multihost_utils.broadcast_one_to_all(np.asarray(value, np.float32)))


_BARRIERS = itertools.count()  # every process passes the same barriers in the same order: the ids agree


def barrier(name: str, timeout: float = WAIT_SECONDS) -> None:
    """Wait until every process of the run reaches this barrier (at most ``timeout`` seconds; nothing in a lone
    process). JAX's coordination service does the waiting, not a poll of files.

    Raises:
      PeerLostError: a process died (noticed after :data:`PEER_TIMEOUT` s without its heartbeat) or did not
        arrive within ``timeout``.
    """
    if jax.process_count() == 1:
        return
    key = f"fpjax-{next(_BARRIERS)}-{name}"
    try:
        multihost.get_barrier_sync_fn()(key=key, timeout_ms=int(timeout * 1000))
    except Exception as error:  # noqa: BLE001 - JAX's runtime errors have one type whatever the cause
        raise PeerLostError(
            f"process {jax.process_index()} of {jax.process_count()} waited at {name!r} for the others, and one "
            f"of them died or did not arrive within {timeout:g} s ({_first_line(error)}): see the other "
            "processes' output, then run the same commands again to resume"
        ) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    peer_timeout: int = PEER_TIMEOUT,
):
    """``jax.distributed.initialize`` from the arguments or :data:`COORDINATOR_VARIABLES`; nothing when neither
    names a coordinator (a lone process). Returns ``(process_index, process_count)``.

    ``peer_timeout``: seconds without a heartbeat after which a process counts as dead; the others then fail
    at their next barrier or collective rather than wait for it.

    Raises:
      ValueError: a coordinator without the process count and id (or one of those without it).
    """
    coordinator = coordinator or os.environ.get("FPJAX_COORDINATOR")
    num_processes = num_processes if num_processes is not None else _int_variable("FPJAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_variable("FPJAX_PROCESS_ID")
    given = [value is not None for value in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "a multi-process run needs the coordinator (host:port), the number of processes and this process's id "
            "(--coordinator, --num-processes, --process-id or FPJAX_COORDINATOR, FPJAX_NUM_PROCESSES, FPJAX_PROCESS_ID)"
        )
    if all(given):
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} is not in 0..{num_processes - 1}")
        if jax.distributed.is_initialized():
            raise ValueError("jax.distributed is already initialized in this process: initialize it once")
        jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=peer_timeout)
    return jax.process_index(), jax.process_count()


def _int_variable(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)
