"""The zarr store on its own: checksums, digests, damaged chunks, metadata mismatches, the writer lock."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from fpjax.batch.store import (
    ARRAYS,
    LOCK_FILE,
    STATS,
    FPStore,
    MemoryStore,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    acquire_lock,
    differences,
)

N, T, SHAPE = 4, 3, (4, 5)
META = {"config": {"g": 0.5, "T": T, "drift": {"kind": "gaussian"}}, "batch_size": 2, "ids": ["a", "b", "c", "d"]}


def _values(i):
    rng = np.random.default_rng(i)
    m = rng.normal(size=(T + 1, *SHAPE, 1)).astype(np.float32)
    stats = {
        "outer_iterations": rng.integers(1, 9, (1, T)),
        "linear_iterations": rng.integers(1, 9, (1, T)),
        "residual": rng.uniform(0, 1e-6, (1, T)),
        "converged": np.ones((1, T), bool),
    }
    return m, stats


def _store(path, lock="exclusive", channels=1, **changes):
    return FPStore.open(
        path, metadata=dict(META, **changes), n=N, T=T, shape=SHAPE, channels=channels, lock=lock
    )  # fmt: skip


@pytest.fixture
def full(tmp_path):
    """A store with every image written (lock released), and the values written."""
    path = tmp_path / "s.zarr"
    with _store(path) as store:
        for i in range(N):
            store.write(i, *_values(i))
    return path


def _chunk(path, array, index):
    """The chunk file of image ``index`` in ``array`` (one chunk per image and channel)."""
    top = path / array / "c" / str(index)
    (chunk,) = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
    return chunk


def truncate(chunk):
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])


def flip(chunk, count=64):
    data = bytearray(chunk.read_bytes())
    start = max(0, len(data) // 2 - count // 2)
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    chunk.write_bytes(bytes(data))


def delete(chunk):
    chunk.unlink()


def test_every_array_checksums_every_chunk(full):
    group = zarr.open_group(str(full), mode="r")
    for name in ARRAYS + ("digest", "done"):
        assert isinstance(group[name].metadata.codecs[-1], Crc32cCodec), name


def test_undamaged_store_reads_back_what_was_written(full):
    store = _store(full, lock=None)
    assert store.verify() == {}
    for i in range(N):
        m, stats = _values(i)
        np.testing.assert_array_equal(store.m[i], m)
        for name in STATS:
            np.testing.assert_array_equal(store.all_stats()[name][i], np.asarray(stats[name], store.group[name].dtype))
    np.testing.assert_array_equal(np.asarray(store.m)[2, 1], store.m[2, 1])


@pytest.mark.parametrize("damage", [truncate, flip, delete])
@pytest.mark.parametrize("array", ["m", "residual", "converged"])
def test_a_damaged_chunk_raises_naming_store_image_array_and_fix(full, damage, array):
    damage(_chunk(full, array, 2))
    store = _store(full, lock=None)
    read = (lambda: store.m[2]) if array == "m" else (lambda: store.all_stats())
    with pytest.raises(StoreCorruptError) as info:
        read()
    message = str(info.value)
    assert str(full) in message and "image 'c' (index 2)" in message and f"array {array!r}" in message
    assert "rerun `fpjax precompute`" in message and "delete the store" in message and message.count("\n") <= 1
    assert info.value.index == 2 and info.value.array == array
    assert set(store.verify()) == {2}  # the others still read
    np.testing.assert_array_equal(store.m[3], _values(3)[0])


@pytest.mark.parametrize("sink", ["memory", "zarr"])
def test_an_image_in_another_layout_is_refused_not_broadcast(tmp_path, sink):
    """write takes one image's m as (T+1, H, W, K) and statistics as (K, T); anything else is refused."""
    sink = MemoryStore(N, T, SHAPE, 2) if sink == "memory" else _store(tmp_path / "s.zarr", channels=2)
    with sink as store:
        m, stats = _values(0)  # K = 1: a store of K = 2 would broadcast it
        m2 = np.concatenate([m, m], axis=-1)
        stats2 = {name: np.concatenate([v, v]) for name, v in stats.items()}
        wrong = {
            "(2, 4, 4, 5)": np.moveaxis(m2, -1, 0),  # channel-first
            "(4, 4, 5, 1)": m,  # one field where the store has two
            "(4, 5, 4, 2)": np.swapaxes(m2, 1, 2),  # H and W swapped
            "(4, 4, 5)": m2[..., 0],  # no channel axis
        }
        for shape, values in wrong.items():
            with pytest.raises(ValueError, match=r"expected one image's m as \(T\+1, H, W, K\) = \(4, 4, 5, 2\) "
                               r"\(channels last, docs/conventions.md\), got shape " + re.escape(shape)):  # fmt: skip
                store.write(0, values, stats2)
        with pytest.raises(
            ValueError, match=r"expected one image's residual as \(K, T\) = \(2, 3\), got shape \(3, 2\)"
        ):
            store.write(0, m2, dict(stats2, residual=stats2["residual"].T))
        assert not store.done().any()  # nothing was marked written
        store.write(1, m2, stats2)
        np.testing.assert_array_equal(np.asarray(store.m[1]), m2)
        np.testing.assert_array_equal(store.done(), [False, True, False, False])


def test_a_deleted_chunk_never_reads_as_the_fill_value(full):
    delete(_chunk(full, "m", 1))
    with pytest.raises(StoreCorruptError, match="chunk missing"):
        np.asarray(_store(full, lock=None).m)  # not NaN, silently


def test_a_damaged_digest_or_done_flag(full):
    flip(_chunk(full, "digest", 0), 8)
    truncate(_chunk(full, "done", 3))
    store = _store(full, lock=None)
    assert store.done().tolist() == [True, True, True, False]  # an unreadable flag: not finished (recomputed)
    damaged = store.verify()
    assert sorted(damaged) == [0, 3] and "'digest'" in damaged[0] and "'done': chunk checksum fails" in damaged[3]


def test_forget_clears_done_flags(full):
    store = _store(full, lock=None)
    store.forget([1, 2])
    assert store.done().tolist() == [True, False, False, True]


def test_mismatch_names_each_differing_field_in_two_lines(full):
    with pytest.raises(StoreMismatchError) as info:
        _store(full, config={"g": 1.0, "T": T, "drift": {"kind": "linear"}}, ids=["a", "b", "x", "d"])
    message = str(info.value)
    assert "config.g: store has 0.5, this run 1.0" in message
    assert "config.drift.kind: store has 'gaussian', this run 'linear'" in message
    assert "ids[2]: store has 'c', this run 'x'" in message
    assert "T:" not in message and message.count("\n") <= 1 and len(message) < 400
    with pytest.raises(StoreMismatchError, match="batch_size: store has 2, this run 3.*last bits"):
        _store(full, batch_size=3)


def test_differences_of_nested_values():
    assert differences({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 2]}}) == []
    assert differences({"a": {"b": 1}}, {"a": {"b": 2}, "d": 3}) == ["a.b: store has 1, this run 2",
                                                                      "d: store has None, this run 3"]  # fmt: skip
    assert differences({"ids": [1, 2, 3]}, {"ids": [1, 2]}) == ["ids: store has 3 entries, this run 2"]


def test_a_store_of_the_old_layout_is_refused(full):
    group = zarr.open_group(str(full), mode="a")
    del group.attrs["fpjax_format"]
    with pytest.raises(StoreMismatchError, match="layout 1.*delete it or use a new store path"):
        _store(full)


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "s.zarr"
    first = _store(path)
    with pytest.raises(StoreLockedError) as info:
        _store(path)
    message = str(info.value)
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message and "\n" not in message
    assert "process=(index, count)" in message
    with pytest.raises(StoreLockedError):
        _store(path, lock="shared")  # a member of a multi-process run does not share with a lone writer
    first.release()
    with _store(path):  # released: the next writer takes it
        pass


def test_the_processes_of_one_run_share_the_lock(tmp_path):
    path = tmp_path / "s.zarr"
    with _store(path, lock="shared"), _store(path, lock="shared"):
        with pytest.raises(StoreLockedError):
            _store(path)


def test_a_stale_lock_file_is_taken_over(tmp_path):
    path = tmp_path / "s.zarr"
    path.mkdir()
    dead = {"pid": 999999, "host": socket.gethostname(), "mode": "exclusive", "since": "yesterday"}
    (path / LOCK_FILE).write_text(json.dumps(dead))  # a file left behind, its lock gone with its process
    with _store(path):
        owner = json.loads((path / LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid()


def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    path = tmp_path / "s.zarr"
    code = (
        "import sys, time; from fpjax.batch.store import acquire_lock; "
        "h = acquire_lock(sys.argv[1]); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"process {holder.pid} "):
            acquire_lock(path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    acquire_lock(path).close()  # the kernel released the killed process's lock
    assert pathlib.Path(path / LOCK_FILE).exists()


@pytest.mark.parametrize("layout", ["zarr.json", "m/zarr.json", "digest"])
def test_a_damaged_layout_is_refused_naming_the_store(full, layout):
    target = full / layout
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.write_text("garbage{")
    with pytest.raises(StoreError, match=f"the store at {full} is damaged: its layout cannot be read.*delete the"):
        _store(full)


def test_an_unfinished_image_with_a_chunk_cut_short_reads_as_not_written(full):
    store = _store(full, lock=None)
    store.forget([1])  # as if killed while writing image 1: flag not set, a chunk cut short
    truncate(_chunk(full, "m", 1))
    truncate(_chunk(full, "residual", 1))
    assert store.verify() == {}
    assert np.isnan(store.m[1]).all() and store.all_stats()["residual"][1].tolist() == [[0.0] * T]
    np.testing.assert_array_equal(store.m[2], _values(2)[0])
