"""Training data sources: the same steps whether the trajectories are held, streamed from a store or computed."""

import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpjax
from fpjax import FPConfig
from fpjax.batch.store import FPStore, StoreCorruptError
from fpjax.diffusion import sampling
from fpjax.learn import sources
from fpjax.learn import trainer as training
from fpjax.learn.models import UNetConfig

# The U-Net, image size and T of tests/learn/test_trainer.py: the compiled programs are shared.
TINY = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(8,), groups=4)
SIZE, T = 16, 10
FP = FPConfig(T=T, scheme="spectral")


def _images(count=3):
    coarse = jax.random.uniform(jax.random.key(42), (count, 4, 4, 3), jnp.float32)
    return np.asarray(jax.image.resize(coarse, (count, SIZE, SIZE, 3), "linear"))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Three images, their spectral solutions in a store and their embedding computed whole, in memory."""
    images = _images()
    path = tmp_path_factory.mktemp("sources") / "fp.zarr"
    result = fpjax.precompute(images, FP, store=path, batch_size=4)
    trajectories = fpjax.embed(images, np.asarray(result.m[...]), FP)
    result.store.release()
    return images, path, trajectories


def _config(**changes):
    base = dict(batch_size=4, steps_per_call=5, max_steps=10, target_ssim=None,
                sampler=sampling.SamplerConfig(steps=8, method="ode"))  # fmt: skip
    return training.bind_sde(training.TrainConfig(**{**base, **changes}), FP)


def _state(config):
    graphdef, params = training.create_model(TINY, 3, SIZE, jax.random.key(0))
    return graphdef, training.init_state(params, config, jax.random.key(1))


def test_streamed_and_on_the_fly_training_equal_training_in_memory(stored):
    """20 steps from each source, one seed: the same parameters to float32 rounding (the sources embed a batch,
    in memory the whole set was embedded at once; the arithmetic per image is the same). Image 2 trained with
    replay draws every image; mixed training from the store and on the fly: tests/test_pipeline.py."""
    images, path, trajectories = stored
    config, current = _config(replay=0.5), 2
    graphdef, state = _state(config)
    data = {
        "memory": sources.InMemory(images, trajectories),
        "store": sources.FromStore(images, path, FP),
        "on the fly": sources.OnTheFly(images, FP),
    }
    params, losses = {}, {}
    for name, source in data.items():
        trained, losses[name] = training.train_steps(graphdef, state, source, config, 20, False, current)
        assert np.all(np.isfinite(losses[name])) and int(trained.step) == 20
        params[name] = trained.params
    for name in ("store", "on the fly"):
        np.testing.assert_allclose(losses[name], losses["memory"], rtol=1e-4, err_msg=name)
        # Adam divides by the gradient's running scale: a weight whose gradient is rounding noise moves by up to
        # the learning rate (1e-3) per step whatever its sign, so such weights agree to 3.5e-6 under one XLA
        # optimisation level and 1e-6 under another (measured); a wrong draw moves every weight by ~1e-3.
        for a, b in zip(jax.tree.leaves(params["memory"]), jax.tree.leaves(params[name]), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=5e-5, err_msg=name)


def test_on_the_fly_points_equal_the_stored_trajectories(stored):
    images, _, trajectories = stored
    draw = fpjax.learn.objectives.Draw(np.array([2, 0, 2, 1]), np.array([0, 3, 10, 7]))
    source = sources.OnTheFly(images, FP)
    x = jax.jit(source.points)(None, source.fetch(draw), draw)
    np.testing.assert_allclose(x, np.asarray(trajectories)[draw.index, draw.level], rtol=1e-5, atol=1e-6)


def test_a_store_source_reads_only_the_drawn_images(stored, monkeypatch):
    images, path, _ = stored
    source = sources.FromStore(images, path, FP)
    reads = []
    original = FPStore.read_m
    monkeypatch.setattr(FPStore, "read_m", lambda self, rows: reads.append(list(rows)) or original(self, rows))
    config = _config()
    graphdef, state = _state(config)
    draws = training.step_draws(state, 1, 5, source.count, source.T, config)  # image by image: image 1 only
    training.train_steps(graphdef, state, source, config, 5, False, 1, source.fetch(draws), draws)
    assert reads == [[1]]  # five steps of four points each: image 1's rows read once
    mixed = training.step_draws(state, -1, 2, source.count, source.T, config)
    source.fetch(mixed)
    assert reads[-1] == sorted(set(mixed.index.ravel().tolist()))


def test_a_damaged_chunk_met_while_streaming_is_refused_naming_the_image(stored, tmp_path):
    images, path, _ = stored
    copy = tmp_path / "fp.zarr"
    shutil.copytree(path, copy)
    chunk = next(p for p in (copy / "m" / "c" / "1").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-8] + b"\0" * 8)
    source = sources.FromStore(images, copy, FP)
    with pytest.raises(StoreCorruptError, match="image 'image_1'|index 1"):
        training.train(None, source, FP, unet_config=TINY, config=_config(max_steps=5), mode="mixed", progress=False)


def test_on_the_fly_needs_a_linear_scheme(stored):
    with pytest.raises(ValueError, match="linear scheme"):
        sources.OnTheFly(stored[0], FPConfig(T=T))


# The run both the killed process and this one make: image by image over the store's three images, streamed,
# with an EMA; a checkpoint every second evaluation and at each image's end (every call: 5 steps, an evaluation).
_RUN = """
import numpy as np
from fpjax import FPConfig
from fpjax.diffusion import sampling
from fpjax.learn import sources
from fpjax.learn import trainer as training
from fpjax.learn.models import UNetConfig

FP = FPConfig(T=10, scheme="spectral")
CONFIG = training.TrainConfig(batch_size=4, steps_per_call=5, max_steps=15, target_ssim=None, checkpoint_every=2,
                              ema_decay=0.9, sampler=sampling.SamplerConfig(steps=8, method="ode"))
TINY = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(8,), groups=4)


def run(images, store, checkpoints, on_evaluation=None, config=CONFIG):
    source = sources.FromStore(np.load(images), store, FP)
    return training.train(None, source, FP, unet_config=TINY, config=config, progress=False,
                          checkpoint_dir=checkpoints, on_evaluation=on_evaluation)
"""
_KILLED = """
import os, signal, sys

def die_at_the_fifth(record, seen=[]):  # mid image 1, one evaluation after the last checkpoint
    seen.append(record)
    if len(seen) == 5:
        os.kill(os.getpid(), signal.SIGKILL)

run(*sys.argv[1:4], on_evaluation=die_at_the_fifth)
"""


def test_a_streamed_run_killed_mid_run_resumes_to_the_uninterrupted_run(stored, tmp_path):
    """SIGKILL from the run's own evaluation callback (no sleep), mid image, while the prefetch thread reads
    the next call's rows: the resumed run retrains from the last checkpoint to the uninterrupted state (weights,
    optimizer, EMA, step, key) and log, bit for bit. Another run refuses the checkpoints."""
    images, path, _ = stored
    np.save(tmp_path / "images.npy", images)
    arguments = [str(tmp_path / "images.npy"), str(path), str(tmp_path / "killed")]
    killed = subprocess.run([sys.executable, "-c", _RUN + _KILLED, *arguments], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    namespace = {}
    exec(_RUN, namespace)  # noqa: S102 - the same run, in this process
    resumed = namespace["run"](*arguments)
    full = namespace["run"](arguments[0], arguments[1], tmp_path / "uninterrupted")
    assert int(resumed.state.step) == int(full.state.step) == 45
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    keys = ("image", "step", "global_step", "loss", "ssim", "psnr", "mse")
    assert [[r[k] for k in keys] for r in full.log] == [[r[k] for k in keys] for r in resumed.log]
    other = namespace["CONFIG"].__class__(**{**namespace["CONFIG"].__dict__, "max_steps": 20})
    with pytest.raises(ValueError, match="another run"):
        namespace["run"](*arguments, config=other)
