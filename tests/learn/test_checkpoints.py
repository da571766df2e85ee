"""Verified checkpoints: every kind of damage to the newest checkpoint is reported naming it, and the newest
intact one is restored, exactly as it was saved; with none intact the restore refuses in one line."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.learn.checkpoints import DIGEST_FILE, Checkpoints

FINGERPRINT = {"run": "test"}
# tensorstore leaves the handles of a read that failed on damaged bytes to the garbage collector
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(value: float) -> dict:
    rng = np.random.default_rng(int(value))
    return {"w": jnp.asarray(rng.normal(size=(48, 40)), jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


@pytest.fixture
def saved(tmp_path):
    """Checkpoints 1 and 2, written and closed."""
    directory = tmp_path / "checkpoint"
    checkpoints = Checkpoints(directory, FINGERPRINT)
    for step in (1, 2):
        checkpoints.save(step, _state(step), {"evaluations": step})
    return directory


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()),
               key=lambda p: p.stat().st_size)  # fmt: skip


def _flip(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 64)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flip": lambda step: _flip(_largest_data_file(step)),
    "truncate": lambda step: (f := _largest_data_file(step)).write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "delete": lambda step: _largest_data_file(step).unlink(),
    "damaged-json": lambda step: (step / "progress" / "metadata").write_text('{"evaluations": 2, "fing'),
    "altered-json": lambda step: (step / "progress" / "metadata").write_text(
        json.dumps({"evaluations": 7, "fingerprint": FINGERPRINT})
    ),
    "no-digest": lambda step: (step / DIGEST_FILE).unlink(),
}


def _assert_state(state, expected):
    for name in expected:
        np.testing.assert_array_equal(np.asarray(state[name]), np.asarray(expected[name]))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_named_and_the_intact_older_one_restored(saved, damage):
    DAMAGE[damage](saved / "2")
    with pytest.warns(RuntimeWarning, match=r"checkpoint 2: .*resuming from checkpoint 1") as record:
        state, progress = Checkpoints(saved, FINGERPRINT).restore(_state(0))
    assert "\n" not in str(record[0].message)
    _assert_state(state, _state(1))
    assert progress == {"evaluations": 1}


def test_undamaged_checkpoints_restore_the_newest_exactly(saved):
    state, progress = Checkpoints(saved, FINGERPRINT).restore(_state(0))
    _assert_state(state, _state(2))
    assert progress == {"evaluations": 2}


def test_with_every_checkpoint_damaged_the_restore_refuses_naming_each(saved):
    DAMAGE["flip"](saved / "2")
    DAMAGE["no-digest"](saved / "1")
    with pytest.raises(ValueError, match=r"no intact checkpoint .*checkpoint 2: .*checkpoint 1: .*delete that folder"):
        Checkpoints(saved, FINGERPRINT).restore(_state(0))


def test_another_runs_checkpoint_is_refused(saved):
    with pytest.raises(ValueError, match="belongs to another run"):
        Checkpoints(saved, {"run": "other"}).restore(_state(0))


_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import jax.numpy as jnp, numpy as np
    from fpjax.learn import checkpoints as ck
    c = ck.Checkpoints(sys.argv[1], {"run": "test"})
    rng = lambda v: np.random.default_rng(v)
    state = lambda v: {"w": jnp.asarray(rng(v).normal(size=(48, 40)), jnp.float32), "step": jnp.asarray(v, jnp.int32)}
    c.save(1, state(1), {"evaluations": 1})
    def stop(path, text):  # orbax has written checkpoint 2; its digest not yet
        print("saved", flush=True)
        time.sleep(600)
    ck.files.write_text = stop
    c.save(2, state(2), {"evaluations": 2})
    """
)


def test_a_save_killed_before_its_digest_leaves_the_previous_checkpoint_in_use(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    directory = tmp_path / "checkpoint"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    worker = subprocess.Popen([sys.executable, str(script), str(directory)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert worker.stdout.readline().strip() == "saved"  # blocks until checkpoint 2's state is on disk
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert (directory / "2").is_dir() and not (directory / "2" / DIGEST_FILE).exists()
    with pytest.warns(RuntimeWarning, match="checkpoint 2: it has no digest"):
        state, progress = Checkpoints(directory, FINGERPRINT).restore(_state(0))
    _assert_state(state, _state(1))
    assert progress == {"evaluations": 1}


def test_the_damaged_checkpoint_is_set_aside_so_the_resumed_run_can_write_its_step(saved):
    DAMAGE["flip"](saved / "2")
    checkpoints = Checkpoints(saved, FINGERPRINT)
    with pytest.warns(RuntimeWarning, match=r"kept as 2\.damaged"):
        checkpoints.restore(_state(0))
    assert (saved / "2.damaged").is_dir() and not (saved / "2").exists()
    checkpoints.save(2, _state(5), {"evaluations": 2})  # orbax refused "already exists" before
    state, progress = Checkpoints(saved, FINGERPRINT).restore(_state(0))
    _assert_state(state, _state(5))
