"""Orbax checkpoints of a training run: its :class:`~fpjax.learn.trainer.TrainState` and JSON progress.

A checkpoint carries a *fingerprint* of the run (data shapes and checksum, network, training configuration
including the objective and its SDE, mode), so that a directory holding another run's checkpoints is refused
rather than resumed into a mixture of the two.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp


def fingerprint(images, trajectories, unet_config, config, mode: str) -> dict:
    """What identifies a run: ``mode``, the shapes, the network and training configurations (``repr``) and a
    checksum of the trajectories (JSON-serialisable)."""
    return {
        "mode": mode,
        "images": list(images.shape),
        "trajectories": list(trajectories.shape),
        "unet": repr(unet_config),
        "train": repr(config),
        "checksum": float(np.asarray(trajectories, np.float64).sum()),
    }


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
        """Write ``state`` (a pytree) and ``progress`` (JSON) as checkpoint number ``evaluations``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave({**progress, "fingerprint": self.fingerprint}),
        )
        self.manager.save(evaluations, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, template):
        """``(state, progress)`` of the latest checkpoint (``state`` shaped like ``template``), or ``None`` if there
        is none; a checkpoint of another run raises ``ValueError``. ``progress`` has no fingerprint."""
        step = self.manager.latest_step()
        if step is None:
            return None
        progress = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]
        if progress.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"the checkpoint in {self.manager.directory} belongs to another run "
                f"({progress.get('fingerprint')} != {self.fingerprint}); use a new directory"
            )
        progress.pop("fingerprint")
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), template)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored["state"], progress
