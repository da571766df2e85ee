"""Where :func:`fpjax.precompute` writes: a resumable zarr store on disk, or the same interface in memory.

Both sinks have one interface: ``m`` (indexable ``(N, T+1, H, W, K)``),
``stats(name)`` (``(N, K, T)``), ``done()`` (``(N,)`` bool) and
``write(index, m, stats)``; :class:`MemoryStore` holds NumPy arrays,
:class:`FPStore` a zarr group, one chunk per image and channel.

Layout (zarr v3 group)::

    m                  (N, T+1, H, W, K) float   chunk (1, T+1, H, W, 1)
    outer_iterations   (N, K, T) int32            chunk (1, K, T)
    linear_iterations  (N, K, T) int32
    residual           (N, K, T) float
    converged          (N, K, T) bool
    done               (N,) bool                  chunk (1,): written last, per image
    attrs: fpjax metadata (config, density, projection, image ids, ...)

An image counts as finished only once its ``done`` flag is set, after all of
its chunks are written, so an interrupted run never marks a half-written
image as done; rerunning skips finished images.
"""

from __future__ import annotations

import json
import time

import numpy as np
import zarr

STATS = {"outer_iterations": "int32", "linear_iterations": "int32", "residual": None, "converged": "bool"}
"""The per-step statistics of every image and channel, ``(N, K, T)``, and their dtypes (``None``: the solution's)."""


def _has_metadata(path) -> bool:
    try:
        return "fpjax" in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # noqa: BLE001 - not there yet, or being written
        return False


class MemoryStore:
    """:class:`FPStore`'s interface over NumPy arrays (``precompute`` without a store path)."""

    def __init__(self, n: int, T: int, shape, channels: int, dtype="float32"):
        height, width = shape
        self.m = np.zeros((n, T + 1, height, width, channels), dtype)  # (N, T+1, H, W, K)
        self._stats = {name: np.zeros((n, channels, T), kind or dtype) for name, kind in STATS.items()}
        self._done = np.zeros(n, bool)

    def stats(self, name: str) -> np.ndarray:
        """``(N, K, T)`` statistic ``name`` (one of :data:`STATS`)."""
        return self._stats[name]

    def done(self) -> np.ndarray:
        """``(N,)`` bool: the images written so far (a copy)."""
        return self._done.copy()

    def write(self, index: int, m, stats: dict) -> None:
        """Write image ``index``: ``m`` ``(T+1, H, W, K)`` and its ``(K, T)`` statistics, then mark it done."""
        self.m[index] = m
        for name in STATS:
            self._stats[name][index] = stats[name]
        self._done[index] = True


class StoreMismatchError(ValueError):
    """The store on disk was written with other settings."""


class FPStore:
    """A zarr store of FP solutions; create or reopen it with :meth:`open`."""

    def __init__(self, group):
        self.group = group

    @classmethod
    def open(
        cls,
        path,
        *,
        metadata: dict,
        n: int,
        T: int,
        shape,
        channels: int,
        dtype="float32",
        create=True,
        wait_seconds: float = 600.0,
    ):
        """Create the store at ``path``, or reopen it if its metadata equal ``metadata``.

        With ``create=False`` (the other processes of a multi-process run)
        wait up to ``wait_seconds`` for the creating process instead.

        Raises:
          StoreMismatchError: naming the settings that differ.
        """
        metadata = json.loads(json.dumps(metadata, default=str))  # the form it takes on disk
        if not create:
            deadline = time.monotonic() + wait_seconds
            while not _has_metadata(path):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no process created the store at {path} within {wait_seconds} s")
                time.sleep(0.2)
        group = zarr.open_group(str(path), mode="a")
        if "fpjax" in group.attrs:
            stored = dict(group.attrs["fpjax"])
            if stored != metadata:
                keys = sorted(k for k in set(stored) | set(metadata) if stored.get(k) != metadata.get(k))
                details = "; ".join(f"{k}: store has {stored.get(k)!r}, this run {metadata.get(k)!r}" for k in keys)
                raise StoreMismatchError(
                    f"the store at {path} was written with other settings ({details}); "
                    "use a new store path or the original settings"
                )
            return cls(group)
        height, width = shape
        group.create_array(
            "m",
            shape=(n, T + 1, height, width, channels),
            chunks=(1, T + 1, height, width, 1),
            dtype=dtype,
            fill_value=np.nan,
            overwrite=True,
        )
        for name, kind in STATS.items():
            group.create_array(
                name, shape=(n, channels, T), chunks=(1, channels, T), dtype=kind or dtype, overwrite=True
            )
        group.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False, overwrite=True)
        group.attrs["fpjax"] = metadata  # last: a store without metadata is incomplete and gets recreated
        return cls(group)

    @property
    def metadata(self) -> dict:
        return dict(self.group.attrs["fpjax"])

    @property
    def m(self):
        """The zarr array ``(N, T+1, H, W, K)`` (read slices with ``store.m[i]``)."""
        return self.group["m"]

    def stats(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][:])

    def done(self) -> np.ndarray:
        """``(N,)`` bool; a flag whose chunk cannot be read (a write cut short) counts as not done."""
        array = self.group["done"]
        try:
            return np.asarray(array[:], bool)
        except Exception:  # noqa: BLE001 - any unreadable chunk: fall back to one flag at a time
            flags = np.zeros(array.shape, bool)
            for i in range(array.shape[0]):
                try:
                    flags[i] = bool(array[i])
                except Exception:  # noqa: BLE001
                    flags[i] = False
            return flags

    def write(self, index: int, m, stats: dict) -> None:
        """Write image ``index``: ``m`` ``(T+1, H, W, K)`` and its ``(K, T)`` statistics, then mark it done."""
        self.group["m"][index] = np.asarray(m)
        for name in STATS:
            self.group[name][index] = np.asarray(stats[name])
        self.group["done"][index] = True
