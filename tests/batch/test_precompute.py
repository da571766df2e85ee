import dataclasses
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax.batch.precompute import InitialFields, difficulty, plan_batches, precompute
from fpjax.batch.seeding import seed_groups
from fpjax.batch.store import STATS, FPStore, MemoryStore, StoreMismatchError
from fpjax.data import sample_images, sets

CONFIG = fpjax.FPConfig(T=6)


def _images(n=5, size=16):
    return sample_images(32)[:n, :size, :size]


def test_batched_precompute_equals_one_solve_per_image():
    images = _images()
    result = precompute(images, CONFIG, batch_size=2)
    assert result.m.shape == (5, 7, 16, 16, 3)
    for i, image in enumerate(images):
        single = fpjax.solve(fpjax.initial_log_density(image), CONFIG)
        for c in range(3):  # one shared density: every channel holds it
            np.testing.assert_allclose(result.m[i, ..., c], np.asarray(single.m), rtol=2e-6, atol=1e-6)
        np.testing.assert_array_equal(result.stats["outer_iterations"][i, 0], np.asarray(single.outer_iterations))
    assert result.stats["converged"].all()


def test_precompute_and_solve_images_share_one_layout():
    """precompute's m and statistics are laid out as solve_images' ((N, T+1, H, W, C), (N, C, T)): the same numbers
    at the same indices, no axes to move between them; each channel is its own field's solve."""
    images = _images(3)
    result = precompute(images, CONFIG, per_channel=True, density="intensity", batch_size=2)
    solved = fpjax.solve_images(images, CONFIG, per_channel=True, density="intensity")
    assert result.m.shape == solved.m.shape == (3, 7, 16, 16, 3)
    np.testing.assert_allclose(result.m, np.asarray(solved.m), rtol=2e-6, atol=1e-6)
    for name in ("outer_iterations", "converged"):
        np.testing.assert_array_equal(result.stats[name], np.asarray(getattr(solved, name)), err_msg=name)
    fields = fpjax.initial_log_density(images[2], "intensity", per_channel=True)
    np.testing.assert_allclose(result.m[2, ..., 1], np.asarray(fpjax.solve(fields[1], CONFIG).m), rtol=2e-6, atol=1e-6)


def test_per_channel_and_projection_modes():
    images = _images(4)
    plain = precompute(images, CONFIG, per_channel=True, density="intensity")
    assert plain.m.shape == (4, 7, 16, 16, 3) and plain.stats["residual"].shape == (4, 3, 6)
    projected = precompute(
        images, CONFIG, per_channel=True, density="intensity", projection="initial_guess", cycle=2, dim=6
    )
    np.testing.assert_array_equal(projected.seeds, [0, 0, 2, 2])
    error = np.linalg.norm(projected.m - plain.m) / np.linalg.norm(plain.m)
    assert error < 1e-5
    approx = precompute(images, CONFIG, per_channel=True, density="intensity", projection="approximate", cycle=4)
    assert (approx.stats["outer_iterations"][1:] == 0).all()


def test_store_round_trip_and_mismatch(tmp_path):
    images = _images(3)
    path = tmp_path / "fp.zarr"
    first = precompute(images, CONFIG, store=path, batch_size=2)
    memory = precompute(images, CONFIG, batch_size=2)
    np.testing.assert_array_equal(np.asarray(first.m[:]), memory.m[..., :1])
    again = precompute(images, CONFIG, store=path, batch_size=2)
    assert again.skipped == 3 and again.batch_seconds == []
    with pytest.raises(StoreMismatchError, match="T: store has 6, this run 7|config"):
        precompute(images, fpjax.FPConfig(T=7), store=path)


# The config of a store as fpjax wrote it before scheme objects (c366682, `fpjax precompute --T 6 --store`):
# every option flat, the scheme a name.
FLAT_CONFIG = {"T": 6, "g": 0.5, "boundary": "zero", "linearization": "picard", "advection": "central",
               "outer_tol": 1e-05, "max_outer": 50, "solver": "bicgstab", "tol": 1e-06, "maxiter": None,
               "preconditioner": "auto", "spacing": None, "transform": "auto", "predictor": "extrapolate",
               "scheme": "log_density"}  # fmt: skip


def test_a_store_written_before_scheme_objects_stays_readable_and_resumable(tmp_path):
    import zarr

    images = _images(2)
    path = tmp_path / "fp.zarr"
    first = precompute(images, CONFIG, store=path, batch_size=2)
    group = zarr.open_group(str(path), mode="a")
    group.attrs["fpjax"] = {**group.attrs["fpjax"], "config": FLAT_CONFIG}  # as the older fpjax left it
    again = precompute(images, CONFIG, store=path, batch_size=2)
    assert again.skipped == 2
    np.testing.assert_array_equal(np.asarray(again.m[:]), np.asarray(first.m[:]))
    scheme = zarr.open_group(str(path), mode="r").attrs["fpjax"]["config"]["scheme"]
    assert scheme == {"type": "LogDensity", **{k: FLAT_CONFIG[k] for k in scheme if k != "type"}}
    assert set(scheme) - {"type"} == {f.name for f in dataclasses.fields(fpjax.LogDensity)}
    group.attrs["fpjax"] = {**group.attrs["fpjax"], "config": {**FLAT_CONFIG, "linearization": "newton"}}
    with pytest.raises(StoreMismatchError, match="config.scheme.linearization: store has 'newton', this run 'picard'"):
        precompute(images, CONFIG, store=path, batch_size=2)


_WORKER = textwrap.dedent(
    """
    import sys, time, numpy as np, fpjax
    from fpjax.data import sample_images
    from fpjax.batch.precompute import precompute

    def stop_after_the_first_batch(indices, stats, seconds):  # say which images are written, then wait to be killed
        print("written", *map(int, indices), flush=True)
        time.sleep(600)

    images = np.concatenate([sample_images(32)[:, :16, :16]] * 2)[:24]
    kill = sys.argv[2] == "kill"
    result = precompute(images, fpjax.FPConfig(T=40), store=sys.argv[1], batch_size=2,
                        on_batch=stop_after_the_first_batch if kill else None)
    print("skipped", result.skipped, flush=True)
    """
)


def _first_line(proc, seconds: float) -> str:
    """The first line ``proc`` prints, waiting at most ``seconds`` (then it is killed and the test fails)."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    if not ready:
        proc.kill()
        proc.wait()
        pytest.fail(f"the worker printed nothing in {seconds} s")
    return proc.stdout.readline()


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    killed, clean = tmp_path / "killed.zarr", tmp_path / "clean.zarr"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(killed), "kill"], stdout=subprocess.PIPE, text=True, env=env
    )
    line = _first_line(proc, 300)  # the first batch is written and the worker waits in on_batch: kill it there
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and line.split()[0] == "written", line
    first = [int(i) for i in line.split()[1:]]
    import zarr

    done_after_kill = np.asarray(zarr.open_group(str(killed))["done"][:])
    np.testing.assert_array_equal(np.flatnonzero(done_after_kill), sorted(first))  # that batch, nothing else
    assert 0 < len(first) < 24
    resumed = subprocess.run(
        [sys.executable, str(script), str(killed), "run"], check=True, env=env, capture_output=True
    )
    uninterrupted = subprocess.run(
        [sys.executable, str(script), str(clean), "run"], check=True, env=env, capture_output=True
    )
    assert resumed.stdout.split()[-2:] == [b"skipped", str(len(first)).encode()]  # the resume kept the written batch
    assert uninterrupted.stdout.split()[-2:] == [b"skipped", b"0"]
    a, b = zarr.open_group(str(killed)), zarr.open_group(str(clean))
    assert np.asarray(a["done"][:]).all()
    for name in ("m", "outer_iterations", "linear_iterations", "residual", "converged"):
        np.testing.assert_array_equal(np.asarray(a[name][:]), np.asarray(b[name][:]), err_msg=name)


def test_sharded_run_equals_single_device(tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(
        textwrap.dedent(
            """
        import sys, jax, numpy as np, fpjax
        from fpjax.data import sample_images
        from fpjax.batch.precompute import precompute
        assert len(jax.devices()) == 4, jax.devices()
        images = sample_images(32)[:6, :16, :16]
        plain = precompute(images, fpjax.FPConfig(T=6), batch_size=3)
        projected = precompute(images, fpjax.FPConfig(T=6), batch_size=4, projection="initial_guess", cycle=6, dim=4)
        np.save(sys.argv[1], np.stack([np.asarray(plain.m), np.asarray(projected.m)]))
        """
        )
    )
    out = tmp_path / "sharded.npy"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, capture_output=True)
    single = precompute(_images(6), CONFIG, batch_size=3)
    projected = precompute(_images(6), CONFIG, batch_size=4, projection="initial_guess", cycle=6, dim=4)
    sharded = np.load(out)  # each of 4 simulated devices runs its own share's loops (shard_map)
    np.testing.assert_allclose(sharded[0], single.m, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(sharded[1], projected.m, rtol=2e-6, atol=1e-6)


def test_bad_images_are_named_with_their_index():
    images = _images(3).copy()
    images[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image 2: image has NaN"):
        precompute(images, CONFIG)
    with pytest.raises(ValueError, match="projection must be"):
        precompute(images[:2], CONFIG, projection="magic")


class _CountingSet(sets.ArraySet):
    """An image set that records how many images each read asks for."""

    def __init__(self, images):
        super().__init__(images)
        self.reads = []

    def __getitem__(self, index):
        out = super().__getitem__(index)
        self.reads.append(len(out) if np.ndim(out) == 4 else 1)
        return out


def test_an_image_set_is_solved_a_batch_at_a_time_into_the_same_store(tmp_path, monkeypatch):
    """A lazy set is read in batches and chunks (never whole) and gives the array's solutions, with the same
    projection seeds; a bad image is named before anything is solved."""
    monkeypatch.setattr(InitialFields, "CHUNK", 3)
    images = _images(7)
    image_set = _CountingSet(images)
    kwargs = dict(batch_size=2, projection="initial_guess", cycle=4, dim=4)
    lazy = precompute(image_set, CONFIG, store=tmp_path / "lazy.zarr", **kwargs)
    whole = precompute(images, CONFIG, **kwargs)
    assert max(image_set.reads) <= 3 and sum(image_set.reads) < 3 * len(images)  # checked once, solved once
    np.testing.assert_allclose(np.asarray(lazy.m[...]), whole.m[..., :1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(lazy.seeds, whole.seeds)
    bad = images.copy()
    bad[5, 1, 1, 0] = np.inf
    named = sets.ArraySet(bad, names=[f"cat_{i}.png" for i in range(7)])
    with pytest.raises(ValueError, match="image cat_5.png: image has"):
        precompute(named, CONFIG, store=tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()  # refused before the store was created


def test_precompute_accepts_jax_arrays(tmp_path):
    result = precompute(jnp.asarray(_images(2)), CONFIG)
    assert isinstance(result.m, np.ndarray)
    assert pathlib.Path(tmp_path).exists()


def test_two_processes_share_the_work_into_one_store(tmp_path):
    script = tmp_path / "share.py"
    script.write_text(
        textwrap.dedent(
            """
        import sys, numpy as np, fpjax
        from fpjax.data import sample_images
        from fpjax.batch.precompute import precompute
        index, store = int(sys.argv[1]), sys.argv[2]
        images = sample_images(32)[:9, :16, :16]
        r = precompute(images, fpjax.FPConfig(T=6), store=store, batch_size=2, projection="initial_guess",
                       cycle=5, dim=4, process=(index, 2))
        print(len(r.batch_seconds))
        """
        )
    )
    store = tmp_path / "shared.zarr"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen([sys.executable, str(script), str(i), str(store)], stdout=subprocess.PIPE, text=True, env=env)
        for i in (1, 0)
    ]
    batches = [int(p.communicate()[0].split()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(b > 0 for b in batches)  # both did some of the work
    import zarr

    shared = zarr.open_group(str(store))
    assert np.asarray(shared["done"][:]).all()
    single = precompute(_images(9), CONFIG, batch_size=2, projection="initial_guess", cycle=5, dim=4)
    np.testing.assert_allclose(np.asarray(shared["m"][:])[..., 0], single.m[..., 0], rtol=1e-6, atol=1e-6)


def test_cluster_seeds_group_similar_images():
    rng = np.random.default_rng(0)
    dark = rng.uniform(0.0, 0.2, size=(5, 8, 8, 3))
    bright = rng.uniform(0.8, 1.0, size=(5, 8, 8, 3))
    images = np.concatenate([dark, bright])[rng.permutation(10)]
    groups = seed_groups(images, "initial_guess", cycle=5, seeds="cluster")
    assert sorted(len(g) for g in groups) == [5, 5]
    for g in groups:  # each cluster is all dark or all bright, and its seed is a member
        means = images[g].mean(axis=(1, 2, 3))
        assert (means < 0.5).all() or (means > 0.5).all()
    assert sorted(np.concatenate(groups).tolist()) == list(range(10))
    result = precompute(_images(6), CONFIG, projection="initial_guess", cycle=3, seeds="cluster", dim=4)
    assert result.stats["converged"].all() and len(set(result.seeds.tolist())) == 2


def test_plan_gives_every_batch_and_seed_to_exactly_one_process():
    work = difficulty(jnp.asarray(np.random.default_rng(0).normal(size=(11, 1, 4, 4))))
    groups = seed_groups(np.zeros((11, 4, 4, 1)), "initial_guess", cycle=5)
    plans = [plan_batches(work, groups, projection="initial_guess", batch_size=2, process=(p, 2)) for p in (0, 1)]
    batches = [b.tolist() for share in plans for plan in share for b in plan.batches]
    seeds = [plan.seed for share in plans for plan in share if plan.writes_seed]
    assert sorted(seeds) == [0, 5, 10] and sorted(i for b in batches for i in b) == [1, 2, 3, 4, 6, 7, 8, 9]
    assert all(len(b) <= 2 for b in batches) and all(plans)  # both processes have work
    (alone,) = [plan_batches(work, [np.arange(11)], projection="off", batch_size=4)]
    assert alone[0].seed is None and [len(b) for b in alone[0].batches] == [4, 4, 3]


def test_memory_and_zarr_sinks_share_one_interface(tmp_path):
    meta = {"what": "test"}
    sinks = [
        MemoryStore(3, 2, (4, 5), 1),
        FPStore.open(tmp_path / "s.zarr", metadata=meta, n=3, T=2, shape=(4, 5), channels=1),
    ]
    m = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5, 1)
    stats = {
        "outer_iterations": [[1, 2]],
        "linear_iterations": [[3, 4]],
        "residual": [[0.1, 0.2]],
        "converged": [[True, False]],
    }
    for sink in sinks:
        assert not sink.done().any()
        sink.write(1, m, stats)
        np.testing.assert_array_equal(sink.done(), [False, True, False])
        np.testing.assert_array_equal(np.asarray(sink.m[1]), m)
        for name in STATS:
            np.testing.assert_allclose(sink.stats(name)[1], np.asarray(stats[name]), rtol=1e-7)


_FUNCTIONS_WORKER = textwrap.dedent(
    """
    import sys, jax.numpy as jnp, fpjax
    from fpjax.data import sample_images
    g = lambda t: 0.3 + 0.4 * t
    drift = lambda t: (0.2 * t, jnp.zeros((16, 16)))
    config = fpjax.FPConfig(T=4, g=g, drift=drift, scheme="density")
    print("skipped", fpjax.precompute(sample_images(32)[:2, :16, :16], config, store=sys.argv[1]).skipped)
    """
)


def test_a_store_of_a_callable_g_and_drift_resumes_in_another_process_and_refuses_other_functions(tmp_path):
    """The store records the functions' values on the solver's times (their repr holds a memory address)."""
    path = tmp_path / "fp.zarr"
    config = fpjax.FPConfig(
        T=4, g=lambda t: 0.3 + 0.4 * t, drift=lambda t: (0.2 * t, jnp.zeros((16, 16))), scheme="density"
    )
    first = precompute(_images(2), config, store=path)
    script = tmp_path / "worker.py"
    script.write_text(_FUNCTIONS_WORKER)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-2:] == ["skipped", "2"], out.stdout + out.stderr
    other_g = dataclasses.replace(config, g=lambda t: 0.3 + 0.5 * t)
    with pytest.raises(StoreMismatchError, match=r"config\.g\.function: store has 'sha256:"):
        precompute(_images(2), other_g, store=path)
    other_drift = dataclasses.replace(config, drift=lambda t: (0.2 * t + 1e-3, jnp.zeros((16, 16))))
    with pytest.raises(StoreMismatchError, match=r"drift\.function"):
        precompute(_images(2), other_drift, store=path)
    np.testing.assert_array_equal(np.asarray(precompute(_images(2), config, store=path).m[:]), np.asarray(first.m[:]))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(batch_size=-1), "batch_size must be a positive integer, got -1"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(dim=0, projection="initial_guess"), "dim must be a positive integer"),
        (dict(cycle=-2, projection="initial_guess"), "cycle must be a positive integer"),
        (dict(ids=["a", "b"]), "ids has 2 names for 3 images"),
        (dict(ids=["a", "a", "b"]), "ids must name each image once: ['a']"),
    ],
)
def test_settings_are_checked_before_any_work(kwargs, words):
    """batch_size=-1 returned an all-zero m and a misleading warning; wrong ids were accepted without a store."""
    with pytest.raises(ValueError, match=re.escape(words)):
        precompute(_images(3), CONFIG, **kwargs)


def test_a_precompute_that_cannot_fit_is_refused_naming_the_fix():
    images = np.random.default_rng(0).uniform(size=(2, 128, 128, 3)).astype(np.float32)
    with pytest.raises(MemoryError, match=r"a batch of 16 images 128x128 with T=1000000 needs .*--batch-size"):
        precompute(images, fpjax.FPConfig(T=10**6))
