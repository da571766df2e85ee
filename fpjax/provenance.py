"""Provenance: what a result was computed on and with, in one JSON-ready form.

Every file that records a run (``metrics.json`` of ``fpjax run``, the
metadata of a pre-computation store, the benchmark and experiment reports)
describes the machine with :func:`machine` and each configuration dataclass
with :func:`jsonable`. This module sits at the lowest layer: it imports no
other fpjax module.
"""

from __future__ import annotations

import dataclasses
import os
import platform

import jax
import numpy as np


def machine() -> dict:
    """The machine a result was measured on.

    Returns:
      ``{"platform", "processor", "cpu_count", "jax", "backend", "devices"}``:
      the OS string, the processor (or the machine type where the OS names
      none), the number of CPUs, the jax version, jax's default backend and
      its devices, as strings and integers.
    """
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def jsonable(config) -> dict:
    """A configuration dataclass as a JSON-ready dict, one key per field.

    Values become JSON types: tuples and arrays lists, NumPy scalars Python
    numbers, callables (a drift, a ``g`` of ``t``) their ``repr``, and a
    nested dataclass (``TrainConfig.sampler``, ``TrainConfig.objective``) a
    dict of its fields with its class name under ``"type"``, so that two
    objectives without fields stay apart. Anything else is its ``repr``.

    Raises:
      TypeError: ``config`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"jsonable takes a dataclass instance (a config), got {type(config).__name__}")
    return {field.name: _value(getattr(config, field.name)) for field in dataclasses.fields(config)}


def _value(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **jsonable(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    return repr(value)  # callables (drift, g of t) and anything else
