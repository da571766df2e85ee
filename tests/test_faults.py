"""Faults a hostile user or a failing disk causes in precompute's store, and how each is caught or repaired.

Every result is compared with an undamaged, uninterrupted run, bit for bit (the arrays on disk).
Tiny problems (16x16, T=5) keep the file fast.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

import fpjax
from fpjax.batch.precompute import precompute
from fpjax.batch.store import ARRAYS, FPStore, StoreCorruptError, StoreLockedError, StoreMismatchError
from fpjax.data import sample_images

CONFIG = fpjax.FPConfig(T=5)
N = 6
IDS = [f"img{i}" for i in range(N)]


def _images():
    return sample_images(32)[:N, :16, :16]


def _arrays(path) -> dict:
    """Every array of a store as written (raw zarr reads, no checks), and its done flags."""
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][:]) for name in ARRAYS + ("digest", "done")}


def _assert_same_store(path, reference):
    arrays = _arrays(path)
    for name, expected in reference.items():
        np.testing.assert_array_equal(arrays[name], expected, err_msg=name)


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "undamaged.zarr"
    precompute(_images(), CONFIG, store=path, batch_size=2, ids=IDS)
    return path, _arrays(path)


def _chunk(path, array, index):
    top = path / array / "c" / str(index)
    (chunk,) = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
    return chunk


def _truncate(chunk):
    chunk.write_bytes(chunk.read_bytes()[:-7])


def _flip_64(chunk):
    data = bytearray(chunk.read_bytes())
    start = max(0, len(data) // 2 - 32)
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    chunk.write_bytes(bytes(data))


DAMAGES = {
    "truncated m": ("m", _truncate),
    "64 flipped bytes of m": ("m", _flip_64),
    "deleted m chunk": ("m", lambda chunk: chunk.unlink()),
    "damaged statistics chunk": ("residual", _flip_64),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_chunk_is_refused_then_exactly_its_image_is_recomputed(undamaged, tmp_path, damage):
    source, reference = undamaged
    path = tmp_path / "store.zarr"
    shutil.copytree(source, path)
    array, how = DAMAGES[damage]
    how(_chunk(path, array, 3))
    store = FPStore(zarr.open_group(str(path), mode="r"), path)
    read = (lambda: np.asarray(store.m)) if array == "m" else store.all_stats
    with pytest.raises(StoreCorruptError) as info:
        read()
    message = str(info.value)
    assert f"{path}" in message and "image 'img3' (index 3)" in message and f"array {array!r}" in message
    assert "rerun `fpjax precompute`" in message
    untouched = {
        p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file() and "c/3" not in str(p.relative_to(path))
    }
    with pytest.warns(
        RuntimeWarning, match=r"1 finished image\(s\) .* failed verification and are recomputed: \['img3'\]"
    ):
        written = []
        repaired = precompute(_images(), CONFIG, store=path, batch_size=2, ids=IDS,
                              on_batch=lambda indices, stats, seconds: written.extend(indices.tolist()))  # fmt: skip
    assert repaired.repaired == 1 and repaired.skipped == N - 1 and written == [3]
    _assert_same_store(path, reference)
    changed = [p for p, mtime in untouched.items() if p.stat().st_mtime_ns != mtime and p.name != "fpjax.lock"]
    assert changed == []  # only image 3's chunks (and its done flag) were rewritten


def test_the_first_repair_reports_what_it_found(undamaged, tmp_path):
    source, reference = undamaged
    path = tmp_path / "store.zarr"
    shutil.copytree(source, path)
    for index, (array, how) in zip((0, 2, 4, 5), DAMAGES.values(), strict=True):
        how(_chunk(path, array, index))
    with pytest.warns(RuntimeWarning, match=r"4 finished image\(s\)"):
        result = precompute(_images(), CONFIG, store=path, batch_size=2, ids=IDS)
    assert result.repaired == 4 and result.skipped == 2 and np.isfinite(np.asarray(result.m)).all()
    _assert_same_store(path, reference)
    assert precompute(_images(), CONFIG, store=path, batch_size=2, ids=IDS).repaired == 0


def test_another_batch_size_is_refused_naming_both(undamaged, tmp_path):
    path = tmp_path / "store.zarr"
    shutil.copytree(undamaged[0], path)
    with pytest.raises(StoreMismatchError, match=r"batch_size: store has 2, this run 3 \(results differ"):
        precompute(_images(), CONFIG, store=path, batch_size=3, ids=IDS)


_WORKER = textwrap.dedent(
    """
    import sys, time, jax, fpjax
    from fpjax.data import sample_images
    from fpjax.batch.precompute import precompute
    written = []
    def pause(indices, stats, seconds):
        written.append(len(indices))
        print(sum(written), flush=True)
        if len(written) == 3:  # the next batch is already dispatched: killed while it computes
            time.sleep(120)
    precompute(sample_images(32)[:10, :16, :16], fpjax.FPConfig(T=5), store=sys.argv[1], batch_size=2,
               projection="initial_guess", cycle=5, dim=4, on_batch=pause)
    """
)


def test_sigkill_then_second_writer_refused_then_stale_lock_taken_over_and_resume_is_exact(tmp_path):
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    settings = dict(config=CONFIG, batch_size=2, projection="initial_guess", cycle=5, dim=4)
    images = sample_images(32)[:10, :16, :16]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(killed)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        written = [int(worker.stdout.readline()) for _ in range(3)]
        assert written[-1] == 5  # seed, 2, 2: paused with 5 of 10 images written
        with pytest.raises(StoreLockedError, match=f"being written by process {worker.pid} on host"):
            precompute(images, store=killed, **settings)  # a second writer on the same store
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    resumed = precompute(images, store=killed, **settings)  # the dead writer's lock is taken over
    assert resumed.skipped == 5 and resumed.repaired == 0
    precompute(images, store=clean, **settings)
    _assert_same_store(killed, _arrays(clean))


@pytest.fixture
def full_disk(tmp_path):
    """A 512 KiB file system (a tmpfs: needs permission to mount, else the test is skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_under_orbax_is_one_line_without_its_threads_tracebacks(full_disk, monkeypatch, capfd):
    """orbax's writer threads log every failed write with a traceback; the command prints one line, naming the
    checkpoint folder, with the documented exit status."""
    from fpjax import cli
    from fpjax.cli import commands
    from fpjax.learn.checkpoints import Checkpoints

    def command(args):  # what fpjax run does when it checkpoints, onto the full disk
        Checkpoints(full_disk / "checkpoint", {"run": 1}).save(
            1, {"w": np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)}, {}
        )

    monkeypatch.setattr(commands, "run_command", command)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--out", str(full_disk / "out")])
    assert exit_.value.code == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 2, err
    assert lines[0].startswith("fpjax run: error: No space left on device: ") and "checkpoint" in lines[0], err
    assert "free some disk space" in lines[1]


def test_a_store_cut_short_by_a_full_disk_resumes_to_the_uninterrupted_result(tmp_path):
    """fpjax precompute --store on a disk that fills midway: one line, exit 1; the store moved to a disk with room
    and the same command run again equals an uninterrupted run, array for array."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs permission to mount a small tmpfs")
    command = [sys.executable, "-m", "fpjax.cli", "precompute", "--n", "4", "--T", "8", "--batch-size", "1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        cut = subprocess.run(command + ["--store", str(disk / "s.zarr")], capture_output=True, text=True, env=env)
        assert cut.returncode == 1, cut.stderr
        assert "No space left on device" in cut.stderr and "Traceback" not in cut.stderr, cut.stderr
        assert not _arrays(disk / "s.zarr")["done"].all()  # cut short midway
        shutil.copytree(disk / "s.zarr", tmp_path / "moved.zarr")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    for store in ("moved.zarr", "clean.zarr"):
        done = subprocess.run(command + ["--store", str(tmp_path / store)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    _assert_same_store(tmp_path / "moved.zarr", _arrays(tmp_path / "clean.zarr"))
