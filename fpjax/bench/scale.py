"""``fpjax bench scale``: training memory and speed against the data set's size, for each data source, and the
pre-computation's throughput into a store against the disk's own write rate.

Images: the CIFAR-10 subset (all 1,010 images) when present, else the embedded samples, grown to any size by
:class:`fpjax.data.sets.SyntheticSet` (flips and shifts; deterministic). 32x32 RGB, ``T`` = 100 by default.

* **Memory and speed.** For each source (:mod:`fpjax.learn.sources`: ``memory``, ``store``, ``on_the_fly``) and
  each ``N``, a fresh process trains the default U-Net for ``--steps`` mixed steps (batch 8) and reports its
  peak resident memory (``VmHWM``), the device's peak where it reports one, and the steps per second after
  the first call (compilation excluded). ``memory`` (the whole set's trajectories embedded on the device: the
  path ``fpjax run`` took before) is measured only up to ``--memory-max`` images: it grows about 1.24 MB per image.
* **Pre-computation throughput.** ``fpjax.precompute`` of ``N`` images into a fresh store, for ``"spectral"``
  and the default scheme (the latter on ``--default-count`` images: it takes about a second per image): images
  per second, MB of ``m`` per second, bytes per image on disk; beside the disk's sequential write rate measured in
  the same run (``--disk-mb`` written in 8 MB blocks, then ``fsync``).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import google_crc32c  # zarr's CRC32C (a dependency of zarr): the chunk checksum the store writes
import jax
import matplotlib.pyplot as plt
import numpy as np

import fpjax
from fpjax import devices, files
from fpjax.batch.precompute import precompute
from fpjax.batch.store import FPStore, digest
from fpjax.data import cifar_subset, load_cifar10, sample_images
from fpjax.data.sets import SyntheticSet
from fpjax.learn import sources
from fpjax.learn import trainer as training
from fpjax.learn.embedding import embed
from fpjax.learn.models import UNetConfig
from fpjax.provenance import machine

SOURCES = ("memory", "store", "on_the_fly")


def add_arguments(parser):
    parser.add_argument("--devices", type=int, nargs="+",
                        help="instead: training steps/s on a mesh of each many (simulated CPU) devices")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="with --devices: timed calls per setting")
    parser.add_argument("--fusion", action="store_true", help="with --devices: also fused against unfused steps")
    parser.add_argument("--counts", type=int, nargs="+", default=[16, 1010, 20000], help="data set sizes N")
    parser.add_argument("--T", type=int, default=100, help="time steps of the trajectories")
    parser.add_argument("--steps", type=int, default=50, help="training steps per run")
    parser.add_argument("--memory-max", type=int, default=1010, help="largest N trained with the in-memory source")
    parser.add_argument("--default-count", type=int, default=64, help="images pre-computed with the default scheme")
    parser.add_argument("--disk-mb", type=int, default=512, help="MB written to measure the disk's write rate")
    parser.add_argument("--work", help="folder for the stores (default: a temporary folder, removed after)")
    parser.add_argument("--out", default="bench_scale.json", help="JSON file written")


def base_images() -> tuple[np.ndarray, str]:
    """``(B, 32, 32, 3)`` uint8 base images and where they came from."""
    path = cifar_subset()
    if path is not None:
        images, _ = load_cifar10(path)
        return np.round(images * 255).astype(np.uint8), f"CIFAR-10 subset ({len(images)} images, {path})"
    return np.round(sample_images(32) * 255).astype(np.uint8), "fpjax sample images (CIFAR-10 subset absent)"


def images_of(count: int) -> SyntheticSet:
    return SyntheticSet(base_images()[0], count)


def disk_write_rate(folder: pathlib.Path, megabytes: int) -> float:
    """MB/s of a sequential write of ``megabytes`` in 8 MB blocks, ``fsync`` included."""
    block = np.random.default_rng(0).integers(0, 256, 8 * 2**20, dtype=np.uint8).tobytes()
    path = folder / "disk_rate.bin"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(max(megabytes // 8, 1)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return max(megabytes // 8, 1) * 8 * 2**20 / 1e6 / seconds


def _folder_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def precompute_row(scheme: str, count: int, T: int, store: pathlib.Path) -> dict:
    """Throughput of ``precompute`` of ``count`` synthetic images into a fresh store at ``store``."""
    config = fpjax.FPConfig(T=T, scheme=scheme)
    images = images_of(count)[np.arange(count)]
    precompute(images[:16], config, batch_size=16, on_failure="ignore")  # compile, in memory
    start = time.perf_counter()
    in_memory = precompute(images, config, batch_size=16, on_failure="ignore")  # the solves, no store
    solve_seconds = time.perf_counter() - start
    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    result = precompute(images, config, store=store, batch_size=16, on_failure="ignore")
    seconds = time.perf_counter() - start
    raw = count * (T + 1) * 32 * 32 * result.m.shape[-1] * 4
    disk = _folder_bytes(store)
    return dict(scheme=scheme, images=count, seconds=seconds, images_per_second=count / seconds,
                mb_per_second=raw / 1e6 / seconds, bytes_per_image_raw=raw / count,
                bytes_per_image_disk=disk / count, solve_seconds=solve_seconds,
                check_seconds=check_seconds(np.asarray(in_memory.m[:, ..., :1])))  # fmt: skip


def check_seconds(m) -> float:
    """Seconds the store's checks of ``(N, T+1, H, W, K)`` ``m`` take: every image's blake2b digest
    (:func:`fpjax.batch.store.digest`) and a CRC32C of its bytes (zarr's chunk checksum; of the raw bytes here,
    a little more than the compressed chunk it covers)."""
    start = time.perf_counter()
    for row in m:
        digest(row)
        google_crc32c.value(np.ascontiguousarray(row).tobytes())
    return time.perf_counter() - start


def child(source_name: str, count: int, T: int, steps: int, store: str | None) -> dict:
    """One training run in this process: peak memory and steps per second (see the module's docstring)."""
    config = fpjax.FPConfig(T=T, scheme="spectral")
    images = images_of(count)
    if source_name == "memory":
        m = FPStore.read(store).m[...]
        data = sources.InMemory(images, jax.jit(lambda x, m: embed(x, m, config))(images[np.arange(count)], m))
    elif source_name == "store":
        data = sources.FromStore(images, store, config)
    else:
        data = sources.OnTheFly(images, config)
    per_call = 10
    train = training.TrainConfig(batch_size=8, steps_per_call=per_call, max_steps=steps + per_call, target_ssim=None,
                                 check_images=8, checkpoint_every=10**6)  # fmt: skip
    times = []
    training.train(None, data, config, unet_config=UNetConfig(), config=train, mode="mixed", progress=False,
                   on_evaluation=lambda r: times.append(r["train_seconds"]))  # fmt: skip
    device = jax.local_devices()[0].memory_stats() or {}
    return dict(source=source_name, images=count, steps=steps,
                steps_per_second=steps / (times[-1] - times[0]),  # after the first call: compiled
                peak_rss_mb=peak_resident_mb(),
                peak_device_mb=device.get("peak_bytes_in_use", 0) / 2**20 or None)  # fmt: skip


def peak_resident_mb() -> float:
    """This process's peak resident memory (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``: Linux carries that
    across ``fork`` and ``execve``, so a child started by a large parent reports the parent's size (measured: every
    run reported the bench process's 1,620 MB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


def _run_child(source_name: str, count: int, args, store) -> dict:
    return _child_row(["--child", source_name, str(count), str(args.T), str(args.steps), str(store or "")],
                      f"the {source_name} run at N = {count}")  # fmt: skip


def _child_row(arguments: list[str], what: str, env=None) -> dict:
    """The JSON row a fresh ``python -m fpjax.bench.scale ARGUMENTS`` prints last (``what`` names it on failure)."""
    command = [sys.executable, "-m", "fpjax.bench.scale", *arguments]
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed: {out.stderr.strip()[-600:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


MESH_BATCH = 8
"""The global batch of the mesh measurements (split over the devices)."""


def mesh_child(device_count: int, steps: int, repeats: int, fusion: int = 0) -> dict:
    """Steps per second of :func:`fpjax.learn.trainer.train_steps` on a mesh of ``device_count`` devices (in a
    process started with that many) and, in the same process, unplaced (``mesh=None``: the single-device path
    before meshes); with ``fusion``, also unplaced with the steps fused into one ``lax.scan`` and unfused (one
    call per step). Each the median of ``repeats`` calls of ``steps`` steps after a compiling call, the settings'
    calls taking turns (the machine's noise falls on each alike)."""
    config = fpjax.FPConfig(T=20, scheme="spectral")
    images = images_of(16)[np.arange(16)]
    trajectories = jax.jit(lambda x, m: embed(x, m, config))(images, precompute(images, config).m)
    graphdef, params = training.create_model(UNetConfig(), 3, 32, jax.random.key(0))
    if len(jax.devices()) < device_count:
        raise ValueError(f"a mesh of {device_count} devices needs that many; this machine has {len(jax.devices())}")
    mesh = devices.data_mesh(jax.devices()[:device_count])
    settings = {"unplaced": (None, None), "mesh": (mesh, None)}
    if fusion:
        settings.update(fused=(None, True), unfused=(None, False))
    calls = {name: _steps_call(graphdef, params, trajectories, config, placement, fuse, steps)
             for name, (placement, fuse) in settings.items()}  # fmt: skip
    seconds = {name: [] for name in calls}
    for _ in range(repeats + 1):
        for name, call in calls.items():
            seconds[name].append(call())
    rate = {name: steps / float(np.median(times[1:])) for name, times in seconds.items()}  # the first compiles
    row = dict(devices=device_count, batch=MESH_BATCH, steps=steps, repeats=repeats,
               fused=training.fuses_steps(training.TrainConfig()), ratio=rate["mesh"] / rate["unplaced"],
               **{f"{name}_steps_per_second": value for name, value in rate.items()})  # fmt: skip
    return row


def _steps_call(graphdef, params, trajectories, config, mesh, fuse, steps: int):
    """A function that runs ``steps`` mixed steps from where its last call stopped and returns their seconds."""
    train = training.bind_sde(training.TrainConfig(batch_size=MESH_BATCH, steps_per_call=steps, fuse_steps=fuse),
                              config)  # fmt: skip
    data = sources.InMemory(None, trajectories)
    state = training.init_state(params, train, jax.random.key(1))
    if mesh is not None:
        state, data.resident = devices.replicated(state, mesh), devices.replicated(data.resident, mesh)
    held = [state]

    def call() -> float:
        start = time.perf_counter()
        held[0], losses = training.train_steps(graphdef, held[0], data, train, steps, False, -1, mesh=mesh)
        losses.block_until_ready()
        return time.perf_counter() - start

    return call


def _run_mesh_child(device_count: int, args) -> dict:
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={device_count}"
    env = dict(os.environ, XLA_FLAGS=flags.strip())  # simulated devices where the platform is the CPU
    return _child_row(["--mesh-child", str(device_count), str(args.steps), str(args.repeats), str(int(args.fusion))],
                      f"the mesh of {device_count} devices", env)  # fmt: skip


def run_meshes(args) -> int:
    """``--devices``: steps per second on meshes of each size beside the unplaced path (see :func:`mesh_child`)."""
    rows = []
    for count in args.devices:
        rows.append(_run_mesh_child(count, args))
        r = rows[-1]
        print(f"mesh of {count}: {r['mesh_steps_per_second']:.2f} steps/s, unplaced "
              f"{r['unplaced_steps_per_second']:.2f} steps/s, ratio {r['ratio']:.3f}", flush=True)  # fmt: skip
    command = f"fpjax bench scale --devices {' '.join(map(str, args.devices))} --steps {args.steps} "
    command += f"--repeats {args.repeats}"
    result = dict(meshes=rows, machine=machine(), command=command, note=MESH_NOTE)
    files.write_json(args.out, result, indent=2)
    print(mesh_markdown(result))
    print(f"wrote {args.out}")
    return 0


MESH_NOTE = (
    "simulated devices share the host's cores (--xla_force_host_platform_device_count): on a 2-core CPU this "
    "measures the mesh's overhead, not a speed-up"
)


def mesh_markdown(result: dict) -> str:
    lines = ["| devices | global batch | mesh steps/s | unplaced steps/s | mesh / unplaced | fused | unfused |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["meshes"]:
        fusion = [f"{r[k]:.2f}" if k in r else "-" for k in ("fused_steps_per_second", "unfused_steps_per_second")]
        lines.append(f"| {r['devices']} | {r['batch']} | {r['mesh_steps_per_second']:.2f} | "
                     f"{r['unplaced_steps_per_second']:.2f} | {r['ratio']:.3f} | {' | '.join(fusion)} |")  # fmt: skip
    return "\n".join(lines + ["", f"({result['note']})"])


def run(args) -> int:
    if args.devices:
        return run_meshes(args)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="fpjax-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        disk = disk_write_rate(work, args.disk_mb)
        print(f"disk sequential write: {disk:.0f} MB/s", flush=True)
        throughput, stores = [], {}
        for count in args.counts:
            stores[count] = work / f"spectral_{count}.zarr"
            throughput.append(precompute_row("spectral", count, args.T, stores[count]))
            _print_throughput(throughput[-1])
        throughput.append(precompute_row("log_density", args.default_count, args.T, work / "default.zarr"))
        _print_throughput(throughput[-1])
        training_rows = []
        for count in args.counts:
            for name in SOURCES:
                if name == "memory" and count > args.memory_max:
                    continue
                training_rows.append(_run_child(name, count, args, stores[count]))
                _print_training(training_rows[-1])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    command = f"fpjax bench scale --counts {' '.join(map(str, args.counts))} --T {args.T} --steps {args.steps}"
    result = dict(data=base_images()[1], T=args.T, disk_write_mb_per_second=disk, precompute=throughput,
                  training=training_rows, machine=machine(), command=command)  # fmt: skip
    files.write_json(args.out, result, indent=2)
    figure = pathlib.Path(args.out).with_suffix(".png")
    files.save_figure(plot_memory(result), figure, dpi=130)
    print(markdown(result))
    print(f"wrote {figure}")
    print(f"wrote {args.out}")
    return 0


def _print_throughput(r: dict) -> None:
    print(
        f"precompute {r['scheme']:12s} N={r['images']:6d}: {r['images_per_second']:8.1f} images/s "
        f"{r['mb_per_second']:7.1f} MB/s  {r['bytes_per_image_disk'] / 1e6:.3f} MB/image on disk",
        flush=True,
    )


def _print_training(r: dict) -> None:
    print(
        f"train {r['source']:10s} N={r['images']:6d}: peak RSS {r['peak_rss_mb']:7.0f} MB  "
        f"{r['steps_per_second']:.2f} steps/s",
        flush=True,
    )


def plot_memory(result: dict):
    """Peak resident memory against the set's size ``N``, one line per source (log-log)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name in SOURCES:
        rows = [r for r in result["training"] if r["source"] == name]
        if rows:
            ax.plot([r["images"] for r in rows], [r["peak_rss_mb"] / 1e3 for r in rows], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("images N (32x32 RGB, T = 100)")
    ax.set_ylabel("peak resident memory (GB)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"training {result['training'][0]['steps']} steps, batch 8: memory against N", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def markdown(result: dict) -> str:
    lines = ["| source | N | peak RSS (MB) | steps/s |", "|---|---|---|---|"]
    for r in result["training"]:
        lines.append(f"| {r['source']} | {r['images']} | {r['peak_rss_mb']:.0f} | {r['steps_per_second']:.2f} |")
    lines += [
        "",
        f"Disk sequential write: {result['disk_write_mb_per_second']:.0f} MB/s.",
        "",
        "| scheme | N | images/s | MB/s of m | MB/image raw | MB/image on disk | solves alone (s) | checks (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["precompute"]:
        lines.append(
            f"| {r['scheme']} | {r['images']} | {r['images_per_second']:.1f} | {r['mb_per_second']:.1f} | "
            f"{r['bytes_per_image_raw'] / 1e6:.3f} | {r['bytes_per_image_disk'] / 1e6:.3f} | "
            f"{r.get('solve_seconds', np.nan):.1f} of {r['seconds']:.1f} | {r.get('check_seconds', np.nan):.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--mesh-child":
    print(json.dumps(mesh_child(*map(int, sys.argv[2:6]))))
if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    name, count, T, steps, store = sys.argv[2:7]
    print(json.dumps(child(name, int(count), int(T), int(steps), store or None)))
