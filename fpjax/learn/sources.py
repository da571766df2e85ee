"""Where training reads its data: trajectories in memory, an FP store read batch by batch, or on the fly.

The trainer draws each step's points first (:class:`~fpjax.learn.objectives.Draw`: image indices and trajectory
levels, from the step's key), then asks a *source* for what those points need and nothing more:

* :class:`InMemory`: ``(N, T+1, H, W, C)`` trajectories held on the device (a small set; the compiled step
  gathers its points from them).
* :class:`FromStore`: the drawn images' rows of ``m`` read from an :class:`fpjax.batch.store.FPStore`, checked as
  they are read (a damaged chunk is refused naming the image), on a background thread while the previous steps
  run (:class:`Prefetcher`); the compiled step embeds them (:func:`fpjax.embed`).
* :class:`OnTheFly`: for the linear schemes (``"spectral"``, ``"density"``), the drawn images alone: the
  compiled step solves their FP equation and embeds them. No store, no pre-computation stage.

For a fixed seed the three give the same draws, so the same training up to float32 rounding (the embedding of a
batch and of the whole set round alike; tested).

A source has ``count`` (images), ``T``, ``shape`` ``(H, W, C)``, and

* ``fetch(draw)``: on the host, the *payload* of a ``(..., M)`` draw (NumPy arrays with the draw's leading
  axes), read ahead of the step;
* ``points``: a hashable callable, a static argument of the compiled step:
  ``points(resident, payload, draw) -> (M, H, W, C)`` the points ``x^n`` of one step's draw;
* ``resident``: device arrays every step reads whole (:class:`InMemory`'s trajectories; ``None`` otherwise);
* ``images(index)``: ``(M, H, W, C)`` clean images (the denoising checks);
* ``fingerprint()``: what identifies the data for a checkpoint (no copy of the set is made).

``images`` given to a source is anything indexable by an integer array with a ``shape`` (a NumPy array, or a
lazy image set of :mod:`fpjax.data.sets`): a source reads only the images a step draws.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.batch.store import FPStore
from fpjax.learn.embedding import embed
from fpjax.learn.objectives import Draw
from fpjax.solver.initial import check_images
from fpjax.solver.problem import FPConfig
from fpjax.solver.solve import solve_images

LINEAR_SCHEMES = ("spectral", "density")
"""Schemes whose solve is cheap and exact enough to run inside every training step (:class:`OnTheFly`)."""


def _take(images, index) -> np.ndarray:
    """``images[index]`` for any ``(M,)`` or ``(S, M)`` integer index, reading each distinct image once."""
    index = np.asarray(index)
    unique, inverse = np.unique(index, return_inverse=True)
    return np.asarray(images[unique], np.float32)[inverse.reshape(index.shape)]


def _select(trajectories, level):
    """``(M, H, W, C)``: level ``level[i]`` of trajectory ``i`` of ``(M, T+1, H, W, C)`` trajectories."""
    return trajectories[jnp.arange(level.shape[0]), level]


# ----------------------------------------------------------------------------------------------
# in memory


@dataclasses.dataclass(frozen=True)
class Gather:
    """The points of trajectories held whole on the device (:class:`InMemory`)."""

    def __call__(self, resident, payload, draw: Draw):
        del payload
        return resident[draw.index, draw.level]


class InMemory:
    """``(N, T+1, H, W, C)`` score-embedded trajectories on the device, with their ``(N, H, W, C)`` images."""

    points = Gather()

    def __init__(self, images, trajectories):
        self.resident = jnp.asarray(trajectories)
        self._images = images
        self.count, levels = self.resident.shape[:2]
        self.T, self.shape = levels - 1, tuple(self.resident.shape[2:])

    def fetch(self, draw: Draw):
        del draw
        return None

    def images(self, index) -> np.ndarray:
        return _take(self._images, index)

    def fingerprint(self) -> dict:
        # A sum on the device (no host copy of the set): enough to tell another data set's checkpoints apart.
        total = jnp.sum(self.resident, dtype=jnp.float32)
        squares = jnp.sum(jnp.square(self.resident), dtype=jnp.float32)
        return {"source": "memory", "trajectories": [self.count, self.T + 1, *self.shape],
                "checksum": [float(total), float(squares)]}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# from a store


@dataclasses.dataclass(frozen=True)
class EmbedRows:
    """The points of the drawn images' rows of ``m``: their score embedding, at the drawn levels."""

    fp_config: FPConfig

    def __call__(self, resident, payload, draw: Draw):
        del resident
        images, m = payload
        return _select(embed(images, m, self.fp_config), draw.level)


class FromStore:
    """The FP solutions of an :class:`fpjax.batch.store.FPStore`, read image by image as the steps draw them.

    Args:
      images: ``(N, H, W, C)`` the store's images, in its order (an array or a lazy data set).
      store: an open :class:`~fpjax.batch.store.FPStore` (or its path) whose ``m`` is ``(N, T+1, H, W, K)``.
      fp_config: the FP configuration the store was made with (its ``T``, ``g`` and boundary embed the rows).
    """

    resident = None

    def __init__(self, images, store, fp_config: FPConfig):
        self.store = store if isinstance(store, FPStore) else FPStore.read(store)
        n, levels, height, width, _ = self.store.m.shape
        if tuple(images.shape[:3]) != (n, height, width) or levels != fp_config.T + 1:
            raise ValueError(
                f"the store at {self.store.path} holds m of shape {self.store.m.shape}; the images have shape "
                f"{tuple(images.shape)} and the FP config T = {fp_config.T}: pass the images and config it was made "
                "with"
            )
        self._images, self.points = images, EmbedRows(fp_config)
        self.count, self.T, self.shape = n, fp_config.T, tuple(images.shape[1:])
        self.rows_read = 0  # images' rows of m read so far (each distinct image of a fetch once)

    def fetch(self, draw: Draw):
        index = np.asarray(draw.index)
        unique, inverse = np.unique(index, return_inverse=True)
        m = self.store.read_m(unique)  # checked: a damaged chunk raises StoreCorruptError naming the image
        self.rows_read += len(unique)
        return _take(self._images, index), m[inverse.reshape(index.shape)]

    def images(self, index) -> np.ndarray:
        return _take(self._images, index)

    def fingerprint(self) -> dict:
        # The store's per-image digests identify its content without reading m.
        digests = np.asarray(self.store.array("digest")[:])
        return {"source": "store", "m": list(self.store.m.shape),
                "digests": hashlib.sha256(digests.tobytes()).hexdigest()}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# on the fly


@dataclasses.dataclass(frozen=True)
class SolveAndEmbed:
    """The points of the drawn images, solved (a linear scheme) and embedded inside the step."""

    fp_config: FPConfig
    density: str = "position_kde"
    per_channel: bool | None = None

    def __call__(self, resident, payload, draw: Draw):
        del resident
        images = payload
        solution = solve_images(images, self.fp_config, density=self.density, per_channel=self.per_channel,
                                on_failure="ignore")  # fmt: skip
        return _select(embed(images, solution.m, self.fp_config), draw.level)


class OnTheFly:
    """Trajectories computed from the drawn images inside each step: a linear scheme's solve (about 0.3 ms per
    32x32 image for ``"spectral"`` on a CPU, against some 170 ms per step of the default U-Net) costs less than
    reading it back from a store.

    Args:
      images: ``(N, H, W, C)`` in ``[0, 1]`` (an array or a lazy data set; each batch is checked as it is read).
      fp_config: a configuration of a linear scheme (:data:`LINEAR_SCHEMES`).
      density, per_channel: the initial log-density, as :func:`fpjax.precompute` takes them.
    """

    resident = None

    def __init__(self, images, fp_config: FPConfig, density: str = "position_kde", per_channel=None):
        if fp_config.scheme.name not in LINEAR_SCHEMES:
            raise ValueError(
                f"scheme {fp_config.scheme.name!r} cannot be solved inside each step: on-the-fly trajectories need "
                f"a linear scheme ({', '.join(LINEAR_SCHEMES)}); pre-compute the papers' scheme into a store"
            )
        self._images, self.points = images, SolveAndEmbed(fp_config, density, per_channel)
        self.count, self.T, self.shape = int(images.shape[0]), fp_config.T, tuple(images.shape[1:])

    def fetch(self, draw: Draw):
        images = _take(self._images, draw.index)
        check_images(images.reshape((-1,) + self.shape), allow_constant=True)
        return images

    def images(self, index) -> np.ndarray:
        return _take(self._images, index)

    def fingerprint(self) -> dict:
        return {"source": "on the fly", "images": [self.count, *self.shape], "fp": repr(self.points)}


# ----------------------------------------------------------------------------------------------
# reading ahead


class Prefetcher:
    """``source.fetch`` of the next steps' draw on a background thread while the current steps run.

    The trainer knows the next draw before it needs it (the draws follow from the run's key and the step
    number), except when the image being trained changes: :meth:`get` returns the fetch started for the same
    ``tag`` or, if the tag differs, fetches now. A fetch's error (a damaged chunk) is raised by :meth:`get`.
    ``select``: what of each draw this process reads (its rows of the batch, :func:`fpjax.devices.process_rows`;
    default all).
    A thread rather than a loader library (grain): there is one read to overlap at a time, a call's draw,
    known in advance, and zarr's decompression releases the GIL while XLA runs the step. Measured
    (``fpjax bench scale``, N = 1,010, 32x32, T = 100): the read of a call's 80 points takes about 0.2 s
    against 1.07 s for its 10 steps, and training from the store runs at 0.95x the in-memory speed on 2 CPU
    cores, where the read also competes with XLA for the cores.
    """

    def __init__(self, source, select=None):
        self.source = source
        self._select = (lambda draw: draw) if select is None else select  # a process's rows of each draw
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fpjax-prefetch")
        self._pending = None  # (tag, draw, future)

    def start(self, tag, draw: Draw) -> None:
        """Begin fetching ``draw`` (identified by ``tag``) in the background."""
        draw = jax.tree.map(np.asarray, draw)
        self._pending = (tag, draw, self._pool.submit(self.source.fetch, self._select(draw)))

    def get(self, tag, make_draw):
        """``(draw, payload)`` for ``tag``: the background fetch started with it, or ``make_draw()`` fetched now."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == tag:
            return pending[1], pending[2].result()
        if pending is not None:
            pending[2].cancel()
        draw = jax.tree.map(np.asarray, make_draw())
        return draw, self.source.fetch(self._select(draw))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
