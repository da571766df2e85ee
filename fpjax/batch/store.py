"""Where :func:`fpjax.precompute` writes: a resumable, checksummed zarr store on disk, or the same interface in memory.

Both sinks have one interface: ``m`` (indexable ``(N, T+1, H, W, K)``),
``stats(name)`` / ``all_stats()`` (``(N, K, T)``), ``done()`` (``(N,)`` bool),
``verify(done)`` and ``write(index, m, stats)``; :class:`MemoryStore` holds
NumPy arrays, :class:`FPStore` a zarr group, one chunk per image and channel.
These are fpjax's image-trajectory layouts (``docs/conventions.md``); ``write``
checks them, so an image in another layout is refused, not broadcast.

Layout (zarr v3 group, every chunk zstd-compressed and crc32c-checksummed)::

    m                  (N, T+1, H, W, K) float   chunk (1, T+1, H, W, 1), fill NaN
    outer_iterations   (N, K, T) int32            chunk (1, K, T)
    linear_iterations  (N, K, T) int32
    residual           (N, K, T) float
    converged          (N, K, T) bool
    digest             (N, 5, 16) uint8           blake2b of each image's m and statistics, in that order
    done               (N,) bool                  chunk (1,): written last, per image
    fpjax.lock                                    the writer lock (fcntl.flock), owner's pid and host inside
    attrs: fpjax metadata (config, density, projection, batch size, image ids, ...), fpjax_format

An image counts as finished only once its ``done`` flag is set, after all of
its chunks and its digest are written, so an interrupted run never marks a
half-written image as done; rerunning skips finished images. Every read of
a finished image checks its chunks' checksums and its digest, so a
truncated, altered or deleted chunk raises :class:`StoreCorruptError`
(naming the store, the image and the array) instead of returning wrong
values or the fill value; :meth:`FPStore.verify` lists the damaged images,
which ``precompute`` recomputes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pathlib
import socket
import time
import warnings

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

STATS = {"outer_iterations": "int32", "linear_iterations": "int32", "residual": None, "converged": "bool"}
"""The per-step statistics of every image and channel, ``(N, K, T)``, and their dtypes (``None``: the solution's)."""

ARRAYS = ("m",) + tuple(STATS)
"""The per-image arrays of a store, in the order of the rows of its ``digest``."""

FORMAT = 2
"""The store layout this version writes (1: no checksums, digests or lock; such stores are refused)."""

LOCK_FILE = "fpjax.lock"
FIX = (
    "rerun `fpjax precompute` (or `fpjax run`) with the same settings to recompute the damaged images, "
    "or delete the store"
)
_DIGEST_SIZE = 16
_BLOCK = 64  # images read at once when verifying


class StoreError(ValueError):
    """A store that cannot be used as it is (the subclasses say why; the message says what to do)."""


class StoreMismatchError(StoreError):
    """The store on disk was written with other settings."""


class StoreCorruptError(StoreError):
    """A chunk of a finished image is unreadable, missing or altered (its checksum or its digest fails).

    Attributes: ``path`` (the store), ``index`` (the image's), ``array`` (its name), ``reason``.
    """

    def __init__(self, path, index: int, name: str, array: str, reason: str):
        super().__init__(f"the store at {path} is damaged: {name}, array {array!r}: {reason}.\nFix: {FIX}.")
        self.path, self.index, self.array, self.reason = path, index, array, reason


class StoreDamagedError(StoreError):
    """Finished images of a store fail verification and were not to be repaired.

    Attributes: ``path`` (the store), ``damaged`` (``{image id: why}``).
    """

    def __init__(self, path, damaged: dict):
        first = next(iter(damaged))
        super().__init__(
            f"the store at {path} is damaged: {len(damaged)} finished image(s) fail verification, {listed(damaged)} "
            f"(image {first!r}: {damaged[first]}).\nFix: recompute them (`fpjax run --repair-store`, `fpjax "
            "precompute` with the same settings, or `precompute(..., repair=True)`), or delete the store."
        )
        self.path, self.damaged = path, damaged


class StoreLockedError(StoreError):
    """Another process is writing the store (it holds the store's writer lock)."""


def listed(names, limit: int = 10) -> str:
    """``"['a', 'b', ...]"``: the first ``limit`` of ``names`` for a message, ``...`` if there are more."""
    names = list(names)
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"


def digest(array) -> np.ndarray:
    """``(16,)`` uint8 blake2b of ``array``'s little-endian bytes, its dtype and its shape."""
    array = np.asarray(array)
    array = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())
    return np.frombuffer(h.digest(), np.uint8)


def check_row(m, stats: dict, shape) -> None:
    """Refuse one image's ``m`` unless it is ``(T+1, H, W, K) == shape``, or statistics that are not ``(K, T)``
    (a one-line ``ValueError`` naming the expected layout)."""
    shape = tuple(shape)
    if np.shape(m) != shape:
        raise ValueError(
            f"expected one image's m as (T+1, H, W, K) = {shape} (channels last, docs/conventions.md), "
            f"got shape {np.shape(m)}"
        )
    per_step = (shape[-1], shape[0] - 1)
    for name in STATS:
        if np.shape(stats[name]) != per_step:
            raise ValueError(f"expected one image's {name} as (K, T) = {per_step}, got shape {np.shape(stats[name])}")


class MemoryStore:
    """:class:`FPStore`'s interface over NumPy arrays (``precompute`` without a store path)."""

    def __init__(self, n: int, T: int, shape, channels: int, dtype="float32"):
        height, width = shape
        self.m = np.zeros((n, T + 1, height, width, channels), dtype)  # (N, T+1, H, W, K)
        self._stats = {name: np.zeros((n, channels, T), kind or dtype) for name, kind in STATS.items()}
        self._done = np.zeros(n, bool)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def stats(self, name: str) -> np.ndarray:
        """``(N, K, T)`` statistic ``name`` (one of :data:`STATS`)."""
        return self._stats[name]

    def all_stats(self, done=None) -> dict:
        """Every statistic, ``{name: (N, K, T)}``."""
        return dict(self._stats)

    def done(self) -> np.ndarray:
        """``(N,)`` bool: the images written so far (a copy)."""
        return self._done.copy()

    def verify(self, done=None) -> dict:
        """Nothing in memory is damaged: ``{}``."""
        return {}

    def forget(self, indices) -> None:
        """Mark images as not written."""
        self._done[np.asarray(indices, int)] = False

    def write(self, index: int, m, stats: dict) -> None:
        """Write image ``index``: ``m`` ``(T+1, H, W, K)`` and its ``(K, T)`` statistics (checked), then mark it
        done."""
        check_row(m, stats, self.m.shape[1:])
        self.m[index] = m
        for name in STATS:
            self._stats[name][index] = stats[name]
        self._done[index] = True


def _has_metadata(path) -> bool:
    try:
        return "fpjax" in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # noqa: BLE001 - not there yet, or being written
        return False


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unreadable(error: Exception) -> str:
    if "checksum" in str(error).lower():
        return "chunk checksum fails (bytes altered or cut short)"
    return f"chunk unreadable ({type(error).__name__}: {_short(str(error), 80)})"


def differences(stored, current, prefix: str = "") -> list[str]:
    """``"config.g: store has 0.5, this run 1.0"`` for every differing leaf of two JSON-like values."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored or key not in current:
                out.append(f"{name}: store has {_short(stored.get(key))}, this run {_short(current.get(key))}")
            else:
                out += differences(stored[key], current[key], name)
        return out
    if isinstance(stored, list) and isinstance(current, list) and stored != current:
        if len(stored) != len(current):
            return [f"{prefix}: store has {len(stored)} entries, this run {len(current)}"]
        wrong = [i for i, (a, b) in enumerate(zip(stored, current, strict=True)) if a != b]
        first = wrong[0]
        return [
            f"{prefix}[{first}]: store has {_short(stored[first])}, this run {_short(current[first])}"
            + (f" ({len(wrong)} entries differ)" if len(wrong) > 1 else "")
        ]
    return [] if stored == current else [f"{prefix}: store has {_short(stored)}, this run {_short(current)}"]


# The settings of fpjax before scheme objects (FPConfig held every option flat, ``scheme`` a name): the
# historical form of a store's ``config``, upgraded as read so that those stores stay readable and resumable.
_FLAT_SCHEME_FIELDS = {
    "LogDensity": ("solver", "tol", "maxiter", "preconditioner", "transform", "linearization", "advection",
                   "predictor", "outer_tol", "max_outer"),
    "Density": ("solver", "tol", "maxiter", "preconditioner", "transform"),
    "Spectral": ("transform",),
}  # fmt: skip
_FLAT_SCHEME_TYPES = {"log_density": "LogDensity", "density": "Density", "spectral": "Spectral"}


def upgrade_metadata(metadata: dict) -> dict:
    """A store's metadata in the current form: a ``config`` of fpjax before scheme objects (``"scheme":
    "density"`` with the options flat beside it) becomes ``"scheme": {"type": "Density", ...}``, keeping the
    options of that scheme and dropping those it ignored (they changed nothing in its results)."""
    config = metadata.get("config")
    flat = {name for fields in _FLAT_SCHEME_FIELDS.values() for name in fields}
    if not isinstance(config, dict) or not (isinstance(config.get("scheme"), str) or flat & set(config)):
        return metadata
    config = dict(config)
    kind = _FLAT_SCHEME_TYPES.get(config.pop("scheme", "log_density"), "LogDensity")
    options = {name: config[name] for name in _FLAT_SCHEME_FIELDS[kind] if name in config}
    config = {key: value for key, value in config.items() if key not in flat}
    return {**metadata, "config": {**config, "scheme": {"type": kind, **options}}}


def _mismatch(path, stored: dict, metadata: dict) -> StoreMismatchError:
    diffs = differences(stored, metadata)
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    hint = (
        " (results differ in their last bits between batch sizes, so a resume keeps the store's)"
        if any(d.startswith("batch_size:") for d in diffs)
        else ""
    )
    return StoreMismatchError(
        f"the store at {path} was written with other settings: {shown}{hint}.\n"
        "Rerun with the store's settings, or use a new store path (or delete the store)."
    )


def _owner(handle) -> str:
    handle.seek(0)
    try:
        owner = json.loads(handle.read() or "{}")
        return f"process {owner['pid']} on host {owner['host']} ({owner['mode']}, since {owner['since']})"
    except (ValueError, KeyError):
        return "another process"


def acquire_lock(path, mode: str = "exclusive"):
    """Take the writer lock of the store at ``path`` (created if absent); returns the open lock file.

    ``"exclusive"``: a lone writer; ``"shared"``: one of the processes of a multi-process run (they
    share the lock with each other but not with a lone writer). The lock is an advisory
    ``fcntl.flock``, released when the file is closed or its process dies, so a lock left by a killed
    process is taken over by the next writer. Where the file system has no locks, warns and goes on.

    Raises:
      StoreLockedError: another process holds it, naming that process (pid, host).
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held until release
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if mode == "shared" else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _owner(handle)
        handle.close()
        raise StoreLockedError(
            f"the store at {path} is being written by {owner}: wait for it to finish or stop it "
            "(several processes share a store only as one multi-process run, with process=(index, count))"
        ) from None
    except OSError as error:
        warnings.warn(f"cannot lock {path / LOCK_FILE} ({error}); two writers will not be detected", stacklevel=2)
        return handle
    owner = dict(pid=os.getpid(), host=socket.gethostname(), mode=mode, since=time.strftime("%Y-%m-%d %H:%M:%S"))
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(owner))
    handle.flush()
    return handle


def _readable(path, read):
    """``read()``; a layout file (``zarr.json``) that cannot be read raises StoreError naming the store."""
    try:
        return read()
    except (ValueError, KeyError) as error:  # json.JSONDecodeError is a ValueError; KeyError: an array is gone
        raise StoreError(
            f"the store at {path} is damaged: its layout cannot be read ({type(error).__name__}: "
            f"{_short(str(error), 80)}); delete the store and rerun"
        ) from None


def _create_arrays(group, n: int, T: int, shape, channels: int, dtype) -> None:
    height, width = shape
    codecs = dict(compressors=[ZstdCodec(), Crc32cCodec()], overwrite=True)
    group.create_array(
        "m", shape=(n, T + 1, height, width, channels), chunks=(1, T + 1, height, width, 1), dtype=dtype,
        fill_value=np.nan, **codecs,
    )  # fmt: skip
    for name, kind in STATS.items():
        group.create_array(name, shape=(n, channels, T), chunks=(1, channels, T), dtype=kind or dtype, **codecs)
    group.create_array(
        "digest", shape=(n, len(ARRAYS), _DIGEST_SIZE), chunks=(1, len(ARRAYS), _DIGEST_SIZE), dtype="uint8", **codecs
    )
    group.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False, **codecs)


class VerifiedArray:
    """A store's ``m`` for reading: every finished image read is checked (checksums, digest).

    Indexing reads whole images (the chunks hold whole images anyway); ``np.asarray`` reads all.
    Images not finished read as the fill value NaN.
    """

    def __init__(self, store: FPStore):
        self._store = store
        self.shape = tuple(store.array("m").shape)
        self.dtype = store.array("m").dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key and key[0] is not Ellipsis else (slice(None), key)
        rows = np.arange(self.shape[0])[first]
        if np.ndim(rows) == 0:
            return self._store.read_m(np.array([rows]))[0][rest]
        return self._store.read_m(rows)[(slice(None),) + rest]

    def __array__(self, dtype=None, copy=None):
        m = self[...]
        return m if dtype is None else m.astype(dtype)


class FPStore:
    """A zarr store of FP solutions; create or reopen it with :meth:`open`, use it as a context manager."""

    def __init__(self, group, path=None, lock=None):
        self.group = group
        self.path = pathlib.Path(path) if path is not None else pathlib.Path(str(group.store_path))
        self._lock = lock
        self._arrays = {}

    def array(self, name: str):
        """The zarr array ``name`` (looked up once: each look-up reads its ``zarr.json``)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def release(self) -> None:
        """Give up the writer lock (reading goes on working)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

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
        lock: str | None = "exclusive",
    ):
        """Create the store at ``path``, or reopen it if its metadata equal ``metadata``.

        With ``create=False`` (the other processes of a multi-process run) wait up to
        ``wait_seconds`` for the creating process instead. ``lock``: take the writer lock,
        ``"exclusive"`` (a lone writer), ``"shared"`` (a process of a multi-process run) or ``None``.

        Raises:
          StoreMismatchError: naming the settings that differ.
          StoreLockedError: another writer holds the store.
        """
        metadata = json.loads(json.dumps(metadata, default=str))  # the form it takes on disk
        if not create:
            deadline = time.monotonic() + wait_seconds
            while not _has_metadata(path):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no process created the store at {path} within {wait_seconds} s")
                time.sleep(0.2)
        handle = acquire_lock(path, lock) if lock else None
        try:
            group = _readable(path, lambda: zarr.open_group(str(path), mode="a"))
            if "fpjax" in group.attrs:
                cls._check(path, group.attrs, metadata)
                _readable(path, lambda: [group[name] for name in ARRAYS + ("digest", "done")])
                return cls(group, path, handle)
            _create_arrays(group, n, T, shape, channels, dtype)
            group.attrs["fpjax_format"] = FORMAT
            group.attrs["fpjax"] = metadata  # last: a store without metadata is incomplete and gets recreated
        except BaseException:
            if handle is not None:
                handle.close()
            raise
        return cls(group, path, handle)

    @classmethod
    def read(cls, path) -> FPStore:
        """The store at ``path`` opened for reading only (no writer lock): what training reads from.

        Raises:
          StoreError: ``path`` holds no store, or one whose layout cannot be read.
          StoreMismatchError: a store of another layout version.
        """
        if not pathlib.Path(path).exists() or not _readable(path, lambda: _has_metadata(path)):
            raise StoreError(f"no FP store at {path}: pre-compute into it first (fpjax precompute --store {path})")
        group = _readable(path, lambda: zarr.open_group(str(path), mode="r"))
        cls._check_layout(path, group.attrs)
        _readable(path, lambda: [group[name] for name in ARRAYS + ("digest", "done")])
        return cls(group, path)

    @staticmethod
    def _check_layout(path, attrs) -> None:
        version = attrs.get("fpjax_format", 1)
        if version != FORMAT:
            raise StoreMismatchError(
                f"the store at {path} has layout {version} (this fpjax writes {FORMAT}: chunk checksums, "
                "image digests, a writer lock); delete it or use a new store path"
            )

    @staticmethod
    def _check(path, attrs, metadata: dict) -> None:
        FPStore._check_layout(path, attrs)
        stored = upgrade_metadata(dict(attrs["fpjax"]))
        if stored != metadata:
            raise _mismatch(path, stored, metadata)
        if stored != dict(attrs["fpjax"]):  # written by an older fpjax: keep the current form from now on
            attrs["fpjax"] = stored

    @property
    def metadata(self) -> dict:
        return upgrade_metadata(dict(self.group.attrs["fpjax"]))

    @property
    def m(self) -> VerifiedArray:
        """``(N, T+1, H, W, K)``, checked as read (read slices with ``store.m[i]``); the raw zarr array is
        ``store.group["m"]``."""
        return VerifiedArray(self)

    def _name(self, index: int) -> str:
        ids = self.group.attrs["fpjax"].get("ids") or []
        return f"image {ids[index]!r} (index {index})" if index < len(ids) else f"image {index}"

    def corrupt(self, index: int, array: str, reason: str) -> StoreCorruptError:
        """The error for a damaged chunk of image ``index`` in ``array``."""
        return StoreCorruptError(self.path, index, self._name(index), array, reason)

    def _load(self, name: str, rows, done) -> np.ndarray:
        """``rows`` of array ``name``; a finished image's chunk that cannot be read raises StoreCorruptError.

        An unfinished image's unreadable chunk (a write cut short) reads as the fill value.
        """
        array, rows = self.array(name), np.asarray(rows, int)
        try:
            if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
                return np.asarray(array[int(rows[0]) : int(rows[0]) + len(rows)])
            return np.asarray(array.oindex[rows])
        except Exception:  # noqa: BLE001 - checksum, decompression or shape: one image at a time
            values = []
            for i in rows:
                try:
                    values.append(np.asarray(array[int(i)]))
                except Exception as error:  # noqa: BLE001
                    if done[i]:
                        raise self.corrupt(int(i), name, _unreadable(error)) from None
                    values.append(np.full(array.shape[1:], array.fill_value, array.dtype))
            return np.stack(values)

    def _checked(self, rows, done, arrays=ARRAYS):
        """``(m or None, {name: stats})`` of ``rows``, reading ``arrays`` only; each row ``done`` says is finished
        is checked (against the digests of those arrays)."""
        rows = np.asarray(rows, int)
        check = [j for j, i in enumerate(rows) if done[i]]
        values = {name: self._load(name, rows, done) for name in arrays}
        digests = self._load("digest", rows[check], done) if check else None
        for k, j in enumerate(check):
            for name in arrays:
                if not np.array_equal(digest(values[name][j]), digests[k][ARRAYS.index(name)]):
                    missing = name == "m" and np.isnan(values[name][j]).all()
                    reason = "chunk missing (reads as the fill value)" if missing else "content differs from its digest"
                    raise self.corrupt(int(rows[j]), name, reason)
        return values.get("m"), {name: values[name] for name in STATS if name in values}

    def read_m(self, rows) -> np.ndarray:
        """``(len(rows), T+1, H, W, K)``, finished images checked (:class:`StoreCorruptError` if damaged)."""
        rows = np.asarray(rows, int)
        done = np.zeros(self.array("done").shape, bool)
        done[rows] = self.done(rows)  # only these flags are read (one chunk each)
        # m alone (with its digest): a training step's read needs no statistics (a third of the chunks read)
        blocks = [self._checked(rows[s : s + _BLOCK], done, ("m",))[0] for s in range(0, len(rows), _BLOCK)]
        return np.concatenate(blocks) if blocks else np.zeros((0,) + self.array("m").shape[1:], self.array("m").dtype)

    def all_stats(self, done=None) -> dict:
        """``{name: (N, K, T)}``; the images ``done`` marks (default: the finished ones) are checked."""
        done = self.done() if done is None else done
        return self._checked(np.arange(len(done)), done, ARRAYS[1:])[1]

    def stats(self, name: str) -> np.ndarray:
        return self.all_stats()[name]

    def done(self, rows=None) -> np.ndarray:
        """``(N,)`` bool (or the flags of ``rows``); a flag whose chunk cannot be read counts as not done."""
        array = self.array("done")
        rows = np.arange(array.shape[0]) if rows is None else np.asarray(rows, int)
        try:
            if len(rows) == array.shape[0]:
                return np.asarray(array[:], bool)[rows]
            return np.asarray(array.oindex[rows], bool)
        except Exception:  # noqa: BLE001 - any unreadable chunk: fall back to one flag at a time
            flags = np.zeros(len(rows), bool)
            for j, i in enumerate(rows):
                try:
                    flags[j] = bool(array[int(i)])
                except Exception:  # noqa: BLE001
                    flags[j] = False
            return flags

    def verify(self, done=None) -> dict:
        """``{index: message}`` of the finished images (``done``, default the flags) that fail their checks.

        Reads every finished image once, in blocks: checksums and digests of ``m`` and the statistics;
        an unreadable ``done`` flag is listed too (its image counts as not finished).
        """
        done = self.done() if done is None else np.asarray(done)
        finished = np.flatnonzero(done)
        damaged = self._unreadable_flags()
        for s in range(0, len(finished), _BLOCK):
            block = finished[s : s + _BLOCK]
            try:
                self._checked(block, done)
            except StoreCorruptError:
                for i in block:  # find every damaged image of the block
                    try:
                        self._checked([i], done)
                    except StoreCorruptError as error:
                        damaged[int(i)] = f"{error.array!r}: {error.reason}"
        return damaged

    def _unreadable_flags(self) -> dict:
        """``{index: why}`` of the ``done`` flags whose chunk cannot be read (they count as not done)."""
        array = self.array("done")
        try:
            array[:]
            return {}
        except Exception:  # noqa: BLE001 - find them one by one
            unreadable = {}
            for i in range(array.shape[0]):
                try:
                    array[i]
                except Exception as error:  # noqa: BLE001
                    unreadable[i] = f"'done': {_unreadable(error)}"
            return unreadable

    def forget(self, indices) -> None:
        """Clear the ``done`` flags of ``indices`` (damaged images about to be recomputed)."""
        for i in np.asarray(indices, int):
            self.array("done")[int(i)] = False

    def write(self, index: int, m, stats: dict) -> None:
        """Write image ``index``: ``m`` ``(T+1, H, W, K)``, its ``(K, T)`` statistics (both checked) and digest,
        then mark it done."""
        check_row(m, stats, self.array("m").shape[1:])
        values = {"m": m, **{name: stats[name] for name in STATS}}
        values = {name: np.asarray(values[name], self.array(name).dtype) for name in ARRAYS}
        for name in ARRAYS:
            self.array(name)[index] = values[name]
        self.array("digest")[index] = np.stack([digest(values[name]) for name in ARRAYS])
        self.array("done")[index] = True
