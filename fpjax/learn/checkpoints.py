"""Orbax checkpoints of a training run: its :class:`~fpjax.learn.trainer.TrainState` and JSON progress.

A checkpoint carries a *fingerprint* of the run (data shapes and checksum, network, training configuration
including the objective and its SDE, mode), so that a directory holding another run's checkpoints is refused
rather than resumed into a mixture of the two.

Each checkpoint is *verified*: after orbax has finished writing it, a SHA-256 digest of the state's leaves
(shapes, dtypes and bytes) and of the progress JSON is written beside it (``DIGEST_FILE`` in the step's folder,
atomically), and checked on restore. A checkpoint that cannot be read, whose digest differs, or that has no
digest (a save killed before it was written) is reported in one warning naming it, and the newest intact one
is used instead; with none intact the restore refuses, saying how to start afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from fpjax import devices, files

DIGEST_FILE = "fpjax_digest.json"
"""The digest of a checkpoint, in its step's folder (``CHECKPOINT_DIR/<step>/``)."""
DAMAGED_SUFFIX = ".damaged"
"""A damaged checkpoint skipped on restore is renamed ``<step>.damaged``, so the resumed run can write its step."""


def fingerprint(source, unet_config, config, mode: str) -> dict:
    """What identifies a run: ``mode``, its data source's fingerprint (:mod:`fpjax.learn.sources`: shapes and a
    checksum or the store's digests), the network and training configurations (``repr``); JSON-serialisable."""
    return {"mode": mode, "data": source.fingerprint(), "unet": repr(unet_config), "train": repr(config)}


class Checkpoints:
    """Orbax checkpoints of (state, JSON progress) in ``directory``, indexed by evaluation count (the last two are
    kept), for the run with the given :func:`fingerprint`."""

    def __init__(self, directory, run_fingerprint: dict):
        self.fingerprint = run_fingerprint
        self.manager = ocp.CheckpointManager(
            pathlib.Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
        )

    def save(self, evaluations: int, state, progress: dict) -> None:
        """Write ``state`` (a pytree) and ``progress`` (JSON) as checkpoint number ``evaluations``, then its digest."""
        progress = {**progress, "fingerprint": self.fingerprint}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress))
        self.manager.save(evaluations, args=args, force=True)
        self.manager.wait_until_finished()
        digest = {"state": state_digest(state), "progress": progress_digest(progress)}
        if devices.is_writer():  # one checkpoint directory for all processes (orbax writes it as one)
            files.write_text(self._step_dir(evaluations) / DIGEST_FILE, json.dumps(digest))
        devices.barrier(f"checkpoint {evaluations} verified")  # on disk before any process goes on

    def _step_dir(self, step: int) -> pathlib.Path:
        return pathlib.Path(self.manager.directory) / str(step)

    def restore(self, template):
        """``(state, progress)`` of the newest intact checkpoint (``state`` shaped like ``template``), or ``None`` if
        there is none. A damaged newer one is skipped with a warning naming it; ``progress`` has no fingerprint.

        Raises:
          ValueError: the checkpoints belong to another run, or every checkpoint is damaged (naming each).
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, progress = self._verified(step, template)
            except CheckpointDamagedError as error:
                damaged.append((step, f"checkpoint {step}: {error}"))
                continue
            if damaged:
                self._set_aside([s for s, _ in damaged])  # the resumed run writes those steps again
                warnings.warn(
                    f"{'; '.join(text for _, text in damaged)} in {self.manager.directory} (kept as "
                    f"{', '.join(f'{s}{DAMAGED_SUFFIX}' for s, _ in damaged)}): resuming from checkpoint {step}, the "
                    "newest intact one",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return state, progress
        if damaged:
            raise ValueError(
                f"no intact checkpoint in {self.manager.directory} ({'; '.join(text for _, text in damaged)}); "
                "delete that folder to train from the start"
            )
        return None

    def _set_aside(self, steps) -> None:
        """Rename damaged checkpoints to ``<step>.damaged`` (out of orbax's sight, kept for a look) and reload."""
        for step in steps:
            target = self._step_dir(step).with_name(f"{step}{DAMAGED_SUFFIX}")
            if target.exists():
                shutil.rmtree(target)
            os.replace(self._step_dir(step), target)
        self.manager.reload()

    def _verified(self, step: int, template):
        """``(state, progress)`` of checkpoint ``step`` if its digest holds, else :class:`CheckpointDamagedError`."""
        try:
            recorded = json.loads((self._step_dir(step) / DIGEST_FILE).read_text())
        except FileNotFoundError:
            raise CheckpointDamagedError("it has no digest (its save was cut short)") from None
        except (OSError, ValueError) as error:
            raise CheckpointDamagedError(f"its digest is unreadable ({type(error).__name__})") from None
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
            progress = dict(restored["progress"])
        except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many kinds: each means unreadable
            raise CheckpointDamagedError(f"its progress cannot be read ({_first_line(error)})") from None
        if progress_digest(progress) != recorded.get("progress"):
            raise CheckpointDamagedError("its progress does not match its digest (altered)")
        if progress.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"the checkpoint in {self.manager.directory} belongs to another run "
                f"({progress.get('fingerprint')} != {self.fingerprint}); use a new directory"
            )
        progress.pop("fingerprint")
        abstract = jax.tree.map(_abstract, template)
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
            state = state["state"]
        except Exception as error:  # noqa: BLE001
            raise CheckpointDamagedError(f"its state cannot be read ({_first_line(error)})") from None
        if state_digest(state) != recorded.get("state"):
            raise CheckpointDamagedError("its state does not match its digest (bytes altered)")
        return state, progress


def _abstract(leaf) -> jax.ShapeDtypeStruct:
    """What orbax restores ``leaf`` as: its shape, dtype and, for a placed array, its sharding (several processes
    each restore their devices' part)."""
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))


class CheckpointDamagedError(ValueError):
    """A checkpoint that cannot be read or does not match its digest (the message says which and how)."""


def state_digest(state) -> str:
    """SHA-256 over the leaves of ``state`` in tree order: each leaf's shape, dtype and bytes (PRNG keys as their
    key data), so a changed value, shape or dtype changes it."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.ascontiguousarray(devices.to_host(leaf))  # a global array of several processes: gathered
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def progress_digest(progress: dict) -> str:
    """SHA-256 of ``progress`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(progress, sort_keys=True).encode()).hexdigest()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:120]}"
