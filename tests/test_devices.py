"""Data parallelism on a mesh: the same training and the same samples on 1 and 4 (simulated) devices.

The multi-device checks run in a subprocess with ``--xla_force_host_platform_device_count=4``, so that the flag
(read once, when JAX starts) does not reach the other tests.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import zarr

from fpjax import devices

FOUR_DEVICES = textwrap.dedent(
    """
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np
    import fpjax
    from fpjax import devices
    from fpjax.data import sample_images
    from fpjax.diffusion import sampling
    from fpjax.learn import sources, trainer as training
    from fpjax.learn.models import UNetConfig
    TINY = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=())  # equality needs no depth

    assert len(jax.devices()) == 4, jax.devices()
    images = sample_images(32)[:6, :16, :16]
    fp = fpjax.FPConfig(T=10, scheme="spectral")
    config = training.TrainConfig(max_steps=20, steps_per_call=10, target_ssim=0.999, batch_size=8)
    probe = jax.random.uniform(jax.random.key(5), (4, 16, 16, 3))
    out = {}
    for n in (4, 1):
        mesh = devices.data_mesh(jax.devices()[:n])
        run = training.train(None, sources.OnTheFly(images, fp), fp, unet_config=TINY,
                             config=config, mode="mixed", progress=False, mesh=mesh)
        kernel = jax.tree.leaves(run.state.params)[0]
        score = run.score(ema=False)
        sharding = devices.batch_sharding(mesh, 4)
        generated = jax.jit(lambda k: sampling.generate(score, (8, 16, 16, 3), k, run.sde,
                                                        sampling.SamplerConfig(steps=5), sharding=sharding))
        samples = generated(jax.random.key(3))
        out[n] = dict(
            devices=len(kernel.sharding.device_set), sample_devices=len(samples.sharding.device_set),
            steps=int(run.state.step), losses=[e["loss"] for e in run.log],
            scores=np.asarray(score(probe, jnp.full((4,), 0.5))).tolist(),
            params=[np.asarray(leaf).ravel().tolist() for leaf in jax.tree.leaves(run.state.params)],
            samples=np.asarray(samples).tolist(),
        )
    json.dump(out, open(sys.argv[1], "w"))
    """
)


def test_training_and_sampling_on_four_devices_equal_one(tmp_path):
    """20 mixed steps with the batch of 8 split over 4 devices train the same network as on one device, and the
    same key generates the same samples.

    Tolerances: the 4-device gradient is a sum of 4 partial sums (an all-reduce), so it differs from the
    1-device one in float32 rounding (~1e-7 relative); over 20 Adam steps the network's scores agree to 1e-4 and
    the losses to 1e-5. Single parameters may differ by more: Adam divides each gradient by its own running
    scale, so a parameter whose exact gradient is zero (a bias followed by a GroupNorm, which removes it) moves by
    up to the learning rate per step on rounding noise alone, in a direction that depends on the summation order;
    the network's output does not depend on it."""
    script = tmp_path / "four.py"
    script.write_text(FOUR_DEVICES)
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")  # fmt: skip
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out.json")], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    four, one = out["4"], out["1"]
    assert (four["devices"], four["sample_devices"], one["devices"]) == (4, 4, 1)
    assert four["steps"] == one["steps"] == 20
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(four["scores"], one["scores"], rtol=1e-4, atol=1e-4 * np.abs(one["scores"]).max())
    moved = [np.abs(np.subtract(a, b)).max() for a, b in zip(four["params"], one["params"], strict=True)]
    assert np.median(moved) < 1e-5 and max(moved) < 20 * 1e-3  # at most the learning rate per step
    np.testing.assert_allclose(four["samples"], one["samples"], rtol=1e-4, atol=1e-4)


def test_a_batch_that_does_not_split_over_the_devices_is_refused_with_the_fix():
    mesh = devices.data_mesh()
    devices.check_divisible(8 * len(jax.devices()), mesh, "the batch")
    if len(jax.devices()) > 1:
        with pytest.raises(ValueError, match="does not split over"):
            devices.check_divisible(len(jax.devices()) + 1, mesh, "the batch")
    assert devices.process_rows(8, mesh) == slice(0, 8)  # a lone process holds every row


def test_a_multi_process_run_needs_all_three_settings(monkeypatch):
    for name in devices.COORDINATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert devices.initialize() == (0, 1)  # nothing named: a lone process
    monkeypatch.setenv("FPJAX_COORDINATOR", "localhost:1234")
    with pytest.raises(ValueError, match="number of processes and this process's id"):
        devices.initialize()
    monkeypatch.setenv("FPJAX_NUM_PROCESSES", "two")
    monkeypatch.setenv("FPJAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="FPJAX_NUM_PROCESSES must be a non-negative integer"):
        devices.initialize()
    with pytest.raises(ValueError, match="not in 0..1"):
        devices.initialize("localhost:1234", 2, 2)


TWO_PROCESSES = textwrap.dedent(
    """
    import json, os, sys
    import jax, numpy as np
    from fpjax import devices
    from fpjax.batch.precompute import precompute
    from fpjax.data import sample_images
    from fpjax.learn import sources, trainer as training
    from fpjax.learn.models import UNetConfig
    TINY = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=())  # equality needs no depth
    from fpjax.solver.problem import FPConfig

    out = sys.argv[1]
    index, count = devices.initialize(peer_timeout=5)  # from FPJAX_COORDINATOR, ...: a lone process without them
    images = sample_images(32)[:6, :16, :16]
    fp = FPConfig(T=10, scheme="spectral")
    result = precompute(images, fp, store=os.path.join(out, "store.zarr"), batch_size=2, cycle=3)
    config = training.TrainConfig(max_steps=20, steps_per_call=20, target_ssim=0.999, batch_size=8, check_images=2)
    run = training.train(None, sources.FromStore(images, result.store, fp), fp, unet_config=TINY,
                         config=config, mode="mixed", progress=False, checkpoint_dir=os.path.join(out, "checkpoint"))
    score = jax.jit(run.score(ema=False))
    probe = jax.random.uniform(jax.random.key(5), (2, 16, 16, 3))
    scores = devices.to_host(score(devices.replicated(probe, devices.data_mesh()), np.full((2,), 0.5, np.float32)))
    if devices.is_writer():
        json.dump(dict(count=count, steps=int(devices.to_host(run.state.step)), losses=[e["loss"] for e in run.log],
                       scores=np.asarray(scores).tolist()), open(os.path.join(out, "run.json"), "w"))
    if count > 1 and index == 1:
        os._exit(1)  # process 1 dies; process 0 must not wait for it for ever
    try:
        devices.barrier("after training", timeout=120)
    except devices.PeerLostError as error:
        open(os.path.join(out, "lost.txt"), "w").write(str(error))
        os._exit(3)
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _launch(script, out, processes: int) -> list[subprocess.CompletedProcess]:
    """``script out`` in ``processes`` processes of one ``jax.distributed`` run on localhost (one alone: no run)."""
    env = {k: v for k, v in os.environ.items() if k not in devices.COORDINATOR_VARIABLES}
    env.update(JAX_PLATFORMS="cpu")
    coordinator = f"localhost:{_free_port()}"
    launched = []
    for index in range(processes):
        variables = {} if processes == 1 else dict(FPJAX_COORDINATOR=coordinator, FPJAX_NUM_PROCESSES=str(processes),
                                                  FPJAX_PROCESS_ID=str(index))  # fmt: skip
        launched.append(subprocess.Popen([sys.executable, str(script), str(out)], env=dict(env, **variables),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    done = []
    for process in launched:
        stdout, stderr = process.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return done


def test_two_processes_write_the_single_process_store_and_train_alike_and_a_dead_one_is_reported(tmp_path):
    """Two processes of one ``jax.distributed`` run (gloo on localhost) share the pre-computation (batches of 2:
    each solves its share) into one store, identical to a lone process's; 20 training steps from it, each
    process feeding its half of every batch, give the lone process's losses and scores within float32 rounding
    (a sum of two partial gradients, as on 4 devices); then process 1 dies and process 0, at a barrier, stops
    with a message saying so instead of waiting (JAX's heartbeats notice within ``peer_timeout`` = 5 s)."""
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (alone,) = _launch(script, one, 1)
    assert alone.returncode == 0, alone.stderr[-3000:]
    first, second = _launch(script, two, 2)
    assert first.returncode == 3, first.stderr[-3000:]
    assert "died or did not arrive" in (two / "lost.txt").read_text()
    for name in ("m", "done", "converged", "outer_iterations"):
        a, b = (zarr.open_group(str(folder / "store.zarr"), mode="r")[name][...] for folder in (one, two))
        np.testing.assert_array_equal(a, b, err_msg=name)  # the same batches, solved alike: the same bits
    single, double = (json.loads((folder / "run.json").read_text()) for folder in (one, two))
    assert (single["count"], double["count"], single["steps"], double["steps"]) == (1, 2, 20, 20)
    np.testing.assert_allclose(double["losses"], single["losses"], rtol=1e-5)
    scale = np.abs(single["scores"]).max()
    np.testing.assert_allclose(double["scores"], single["scores"], rtol=1e-4, atol=1e-4 * scale)
    assert (two / "checkpoint").is_dir() and second.returncode == 1
