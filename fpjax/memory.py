"""Memory estimated before it is allocated: a request that cannot fit is refused in one line naming its size,
what is available and the fix, instead of hanging in an allocation or dying in the kernel's OOM killer.

The estimates are of the arrays a request must hold at once (a trajectory ``(T+1, H, W)`` per field and what
holds it: a batch on the device, all images on the host); the working memory of a solve (a few ``(H, W)``
Krylov vectors) is small beside them and is covered by the margin :data:`USABLE_FRACTION`. Available memory
is the device's free bytes where JAX reports them (GPU, TPU), else the host's ``MemAvailable``.
"""

from __future__ import annotations

import os

import jax
import numpy as np

USABLE_FRACTION = 0.8
"""The share of the available memory a request may take: the rest is the solves' working memory, XLA's own
buffers and the other processes'."""


class InsufficientMemoryError(MemoryError):
    """A request that cannot fit in the memory available; the message names its size and the fix."""


def available_host_bytes() -> int:
    """Bytes the host can still give (Linux ``MemAvailable``; elsewhere the free physical pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_device_bytes(device=None) -> int:
    """Free bytes of ``device`` (default: this process's first) where it reports them, else the host's (CPU)."""
    device = jax.local_devices()[0] if device is None else device  # another host's has no stats here
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return available_host_bytes()


def trajectory_bytes(T: int, shape, fields: int = 1, dtype=np.float32) -> int:
    """Bytes of ``fields`` log-density trajectories ``(T+1, H, W)`` (``shape = (H, W)``)."""
    height, width = shape
    return int(fields) * (int(T) + 1) * int(height) * int(width) * np.dtype(dtype).itemsize


def describe_bytes(count: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} bytes"


def require(nbytes: int, what: str, fix: str, *, device: bool = True) -> None:
    """Refuse ``what`` (``"a solve of 1000001 steps on 128x128"``) if its ``nbytes`` exceed
    :data:`USABLE_FRACTION` of the available device (``device=True``) or host memory.

    Raises:
      InsufficientMemoryError: one line, naming the size, what is available and ``fix``.
    """
    available = available_device_bytes() if device else available_host_bytes()
    if nbytes > USABLE_FRACTION * available:
        where = f"{jax.local_devices()[0].platform} device" if device and jax.default_backend() != "cpu" else "host"
        raise InsufficientMemoryError(
            f"{what} needs {describe_bytes(nbytes)}, more than the {describe_bytes(available)} of {where} memory "
            f"available: {fix}"
        )
