"""What every experiment shares: its settings, its images, the timed pre-compute-and-embed step and one fit."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from fpjax.batch.precompute import precompute
from fpjax.data import benchmark_images
from fpjax.learn import ddpm as dd
from fpjax.learn import trainer as training
from fpjax.learn.embedding import embed


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything an experiment run depends on (written into its report)."""

    sizes: tuple | None = None  # (32, 64), and 128 when an accelerator is present
    images: int = 3
    targets: tuple = (0.95, 0.99)
    max_seconds: float = 300.0  # per image and method (exp1)
    budget: float = 600.0  # seconds per method (exp3)
    exp3_images: int = 16
    generate: int = 8
    channels: int = 32
    batch_size: int = 8
    learning_rate: float = 1e-3
    ddpm_learning_rate: float = 1e-3
    seed: int = 0
    cifar: str | None = None  # None: fpjax.data.cifar_subset() (FPJAX_DATA_ROOT or the shared folder)


QUICK = Settings(sizes=(32,), images=1, targets=(0.7, 0.8), max_seconds=10.0, budget=10.0, exp3_images=2, generate=2,
                 channels=8)  # fmt: skip


def default_sizes() -> tuple:
    """32 and 64 on CPUs; 128 too when an accelerator is present (the paper's three sizes)."""
    return (32, 64) if jax.default_backend() == "cpu" else (32, 64, 128)


def targets_for(settings: Settings, size: int) -> tuple:
    """The paper's targets: ``settings.targets`` (0.95, 0.99), and 0.85 / 0.90 at 128x128 (Table 3)."""
    return (0.85, 0.90) if size >= 128 and settings.targets == Settings.targets else settings.targets


def resolved(settings: Settings) -> Settings:
    return settings if settings.sizes else dataclasses.replace(settings, sizes=default_sizes())


def load_images(settings: Settings, size: int, count: int):
    """CIFAR-10 trucks when the subset is present (``settings.cifar`` or :func:`fpjax.data.cifar_subset`), else the
    embedded samples; resized to ``size``: ``(images (count, size, size, 3) float32, source)``."""
    return benchmark_images(size, count, cifar=settings.cifar)


def train_config(settings: Settings, objective, **changes):
    lr = settings.ddpm_learning_rate if isinstance(objective, dd.DDPM) else settings.learning_rate
    return training.TrainConfig(
        learning_rate=lr, batch_size=settings.batch_size, objective=objective, checkpoint_every=10**9, **changes
    )


def first_reach(log, target):
    return next((r for r in log if r["ssim"] >= target), None)


def embedded(images, fp_config, transport=embed):
    """Pre-compute and embed ``images`` -> (trajectories, wall seconds of both).

    ``transport(images, m, fp_config)`` makes the trajectories from the log-densities (default: the score
    embedding; :mod:`fpjax.experiments.ablation` passes its variants)."""
    start = time.perf_counter()
    m = precompute(images, fp_config).m
    trajectories = jax.block_until_ready(transport(images, m, fp_config))
    return trajectories, time.perf_counter() - start


def fit(images, fp_config, unet, config, name, seed):
    """Train one method on ``images`` (``"fpjax"``: on its embedded trajectories, with the SDE of ``fp_config``;
    otherwise DDPM on the clean images); returns (log, pre-computation seconds)."""
    pre, sde = 0.0, None
    if name == "fpjax":
        (trajectories, pre), sde = embedded(images, fp_config), fp_config
    else:
        trajectories = jnp.asarray(images)[:, None]
    result = training.train(
        images, trajectories, sde, unet_config=unet, config=config, key=jax.random.key(seed),
        precompute_seconds=pre, progress=False,
    )  # fmt: skip
    return result.log, pre


def median_seconds(fn, repeats: int = 5) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))
