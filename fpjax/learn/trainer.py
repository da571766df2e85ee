"""Training a score U-Net on score-embedded trajectories, image by image, with SSIM early stopping.

The cross-matrix paper's section 4.2: for each image, train on its
score-embedded trajectory ``x^0..x^T`` with the loss of eq. 29 (Optax Adam,
learning rate 1e-3) until the *denoising SSIM* reaches a target, then go on to
the next image with the same network. The denoising SSIM: the clean image plus
a fixed noise draw (``noise_level``) is denoised with the reverse sampler of
:mod:`fpjax.diffusion.sampling` (a fixed sampler key too) and compared with the clean
image (:func:`fpjax.eval.metrics.ssim`). Training steps are fused ``steps_per_call``
at a time into one jitted ``lax.scan``; an evaluation follows every call.

Everything a run needs to continue is a pytree (:class:`TrainState`: weights,
optimizer state, EMA, step counter, base key); each step's randomness is
``fold_in(key, step)``, so a run resumed from an orbax checkpoint continues
exactly as an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fpjax.diffusion import sampling
from fpjax.diffusion.score_fpe import ConstantVE
from fpjax.eval import metrics
from fpjax.learn import objectives as losses
from fpjax.learn.models.unet import UNet, UNetConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and early-stopping settings (hashable; a static argument).

    Attributes:
      learning_rate: Adam's (the papers': 1e-3).
      warmup_steps: linear warm-up from 0 (0: none).
      grad_clip: global-norm clipping threshold (``None``: none).
      ema_decay: decay of an exponential moving average of the weights used for
        evaluation and sampling (``None``: no EMA, the raw weights are used).
      batch_size: noisy trajectory samples per step.
      lam: the perturbation ``lambda`` of eq. 29.
      stratified: stratified rather than uniform time sampling within a batch.
      replay: image-by-image training only: the fraction of each batch drawn from the images trained
        before the current one (0: the paper's pure image-by-image training, which forgets earlier
        images; see the README).
      parametrization: ``"noise"`` (the network predicts ``z``, ``s = -net/lambda``: a
        fixed output scale that spares the last layer a 1/lambda gain) or ``"score"``
        (the network is ``s``).
      steps_per_call: steps fused per jitted call; also the evaluation interval.
      target_ssim: early-stopping target of the denoising SSIM.
      max_steps: step budget per image (per run for mixed training).
      max_seconds: wall-time budget per image (``None``: none).
      max_total_seconds: wall-time budget of the whole run, pre-computation included (``None``: none);
        the images not reached when it runs out are not trained.
      noise_level: standard deviation of the denoising check's noise.
      sampler: the denoising check's sampler.
      checkpoint_every: evaluations between checkpoints (also at every image's end and the run's end).
      objective: what is trained: :class:`EmbeddedDenoising` (default) or :class:`fpjax.learn.ddpm.DDPM`.
      fuse_steps: run the ``steps_per_call`` steps as one ``lax.scan`` (``None``: yes except on CPUs,
        see :func:`fuses_steps`).
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    batch_size: int = 8
    lam: float = 0.1
    stratified: bool = False
    replay: float = 0.0
    parametrization: str = "noise"
    steps_per_call: int = 25
    target_ssim: float = 0.9
    max_steps: int = 2000
    max_seconds: float | None = None
    max_total_seconds: float | None = None
    noise_level: float = 0.5
    sampler: sampling.SamplerConfig = sampling.SamplerConfig(steps=50, method="ode")
    checkpoint_every: int = 10
    fuse_steps: bool | None = None
    objective: Any = None  # EmbeddedDenoising() unless given

    def __post_init__(self):
        if self.parametrization not in ("noise", "score"):
            raise ValueError(f"parametrization must be 'noise' or 'score', got {self.parametrization!r}")
        if self.batch_size < 1 or self.steps_per_call < 1 or self.max_steps < 1:
            raise ValueError("batch_size, steps_per_call and max_steps must be positive")
        if self.objective is None:
            object.__setattr__(self, "objective", EmbeddedDenoising())
        if not 0.0 <= self.replay < 1.0:
            raise ValueError(f"replay must be in [0, 1), got {self.replay}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")


class TrainState(NamedTuple):
    """The whole training state (a pytree; what a checkpoint holds)."""

    params: Any
    opt_state: Any
    ema: Any  # the EMA weights, or the params again when there is no EMA
    step: jax.Array  # () int32: steps taken in the whole run
    key: jax.Array  # the run's base PRNG key (raw uint32 key data)


class TrainData(NamedTuple):
    """What the steps draw from.

    trajectories: ``(K, T+1, H, W, C)`` score-embedded trajectories.
    labels: ``(K,)`` per-image embedding labels.
    g: ``(T+1,)`` the diffusion ``g(t_n)``.
    current: ``()`` int: the image being trained (image by image), or -1 to draw from all ``K`` uniformly.
    """

    trajectories: jax.Array
    labels: jax.Array
    g: jax.Array
    current: jax.Array = -1


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    if config.warmup_steps:
        lr = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    else:
        lr = config.learning_rate
    adam = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adam) if config.grad_clip else adam


def create_model(unet_config: UNetConfig, channels: int, size: int, key):
    """``(graphdef, params)`` of a freshly initialised :class:`UNet` (``key``: a PRNG key)."""
    model = UNet(unet_config, channels, size, rngs=nnx.Rngs(params=_typed(key)))
    return nnx.split(model)


def init_state(params, config: TrainConfig, key) -> TrainState:
    opt_state = make_optimizer(config).init(params)
    return TrainState(params, opt_state, params, jnp.zeros((), jnp.int32), _raw(key))


def _typed(key):
    return jax.random.wrap_key_data(key) if key.dtype == jnp.uint32 else key


def _raw(key):
    return key if key.dtype == jnp.uint32 else jax.random.key_data(key)


def score_function(graphdef, params, config: TrainConfig, labels=None, dropout_key=None) -> Callable:
    """``s(x, t)`` of the network with weights ``params`` (``labels``: ``(B,)`` or ``None``)."""
    net = network(graphdef, params, labels is not None, dropout_key)
    return EmbeddedDenoising().score(net, labels, config)


def network(graphdef, params, use_labels: bool, dropout_key=None) -> Callable:
    """``net(x, t, labels)``: the raw network output (``labels`` ignored without a per-image embedding)."""
    model = nnx.merge(graphdef, params)
    return lambda x, t, labels: model(x, t, labels if use_labels else None, dropout_key=dropout_key)


def image_indices(key, data: TrainData, batch_size: int, replay: float):
    """``(batch_size,)`` indices into ``data.trajectories``: the current image, replayed earlier ones, or all."""
    count = data.trajectories.shape[0]
    k_image, k_replay = jax.random.split(key)
    current = jnp.asarray(data.current)
    everywhere = jax.random.randint(k_image, (batch_size,), 0, count)
    # Replay: with probability ``replay`` a sample comes from an image trained before the current one.
    earlier = jax.random.randint(k_image, (batch_size,), 0, jnp.maximum(current, 1))
    replayed = (jax.random.uniform(k_replay, (batch_size,)) < replay) & (current > 0)
    return jnp.where(current < 0, everywhere, jnp.where(replayed, earlier, current))


@dataclasses.dataclass(frozen=True)
class EmbeddedDenoising:
    """fpjax's objective: eq. 29 on the score-embedded trajectories; the check denoises with the reverse SDE.

    An objective is what :func:`train` needs to know about a method: ``loss(net, key, data, config)``
    for one batch and ``denoise(net, noisy, labels, key, g_values, config)`` for the SSIM check
    (:class:`fpjax.learn.ddpm.DDPM` is the other one).
    """

    def score(self, net, labels, config: TrainConfig) -> Callable:
        def score(x, t):
            out = net(x, t, labels)
            return -out / config.lam if config.parametrization == "noise" else out

        return score

    def loss(self, net, key, data: TrainData, config: TrainConfig):
        x, t, g_t, z, labels = _batch(key, data, config)
        return losses.embedded_denoising_loss(self.score(net, labels, config), x, t, g_t, z, config.lam)

    # What the score-FPE regulariser (fpjax.diffusion.score_fpe.FPRegularised) needs: the SDE fpjax samples with (the
    # papers' g = 0.5) and the points where eq. 29 evaluates the score.
    sde = ConstantVE(0.5)

    def fpe_points(self, key, data: TrainData, config: TrainConfig, t=None):
        """``(x, t, labels)``: eq. 29's noisy inputs at random steps, or at the steps nearest ``(batch,)`` times
        ``t``."""
        T = data.trajectories.shape[1] - 1
        n = None if t is None else jnp.clip(jnp.round(t * T).astype(jnp.int32), 0, T)
        x, t, _, z, labels = _batch(key, data, config, n)
        # t = 0 has no backward finite difference: those draws move one step later.
        return x + config.lam * z, jnp.maximum(t, 1.0 / T), labels

    def denoise(self, net, noisy, labels, key, g_values, config: TrainConfig):
        return sampling.denoise(self.score(net, labels, config), noisy, key, _g_of(g_values), config.sampler)


DEFAULT_TRAIN = TrainConfig()
DEFAULT_UNET = UNetConfig()


def _batch(key, data: TrainData, config: TrainConfig, n=None):
    """A batch of trajectory points at random step indices (or at the given ``(batch,)`` indices ``n``)."""
    k_image, k_time, k_noise = jax.random.split(key, 3)
    T = data.trajectories.shape[1] - 1
    index = image_indices(k_image, data, config.batch_size, config.replay)
    if n is None:
        n = losses.sample_time_indices(k_time, config.batch_size, T, config.stratified)
    x = data.trajectories[index, n]
    z = jax.random.normal(k_noise, x.shape, x.dtype)
    return x, n.astype(x.dtype) / T, data.g[n], z, data.labels[index]


def _one_step(graphdef, config: TrainConfig, data: TrainData, use_labels: bool):
    optimizer = make_optimizer(config)

    def one_step(state: TrainState, _=None):
        key = jax.random.fold_in(_typed(state.key), state.step)
        batch_key, dropout_key = jax.random.split(key)

        def loss_fn(params):
            return config.objective.loss(network(graphdef, params, use_labels, dropout_key), batch_key, data, config)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = params if config.ema_decay is None else optax.incremental_update(params, state.ema, 1 - config.ema_decay)
        return TrainState(params, opt_state, ema, state.step + 1, state.key), loss

    return one_step


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "num_steps", "use_labels"))
def _scanned_steps(graphdef, state, data, config, num_steps, use_labels):
    return jax.lax.scan(_one_step(graphdef, config, data, use_labels), state, None, length=num_steps)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "use_labels"))
def _single_step(graphdef, state, data, config, use_labels):
    return _one_step(graphdef, config, data, use_labels)(state)


def fuses_steps(config: TrainConfig) -> bool:
    """Whether steps run fused in one ``lax.scan``: ``config.fuse_steps``, or by default everywhere but on CPUs.

    XLA:CPU runs convolution gradients inside loop bodies an order of magnitude
    slower than outside them (jax-ml/jax#12868; measured here: 2.4 s against
    0.17 s per step of the default U-Net at 32x32, batch 8), so on CPUs each step
    is its own jitted call, which costs a dispatch (well under a millisecond) per step.
    """
    if config.fuse_steps is not None:
        return config.fuse_steps
    return jax.default_backend() != "cpu"


def _step_config(config: TrainConfig) -> TrainConfig:
    """``config`` with the fields a step does not read set to fixed values: one compiled program per method,
    whatever the targets and budgets (the warm-ups of the experiments rely on it)."""
    return dataclasses.replace(
        config, target_ssim=0.0, max_steps=1, max_seconds=None, max_total_seconds=None, checkpoint_every=1,
        steps_per_call=1,
    )  # fmt: skip


def train_steps(graphdef, state: TrainState, data: TrainData, config: TrainConfig, num_steps: int, use_labels: bool):
    """``num_steps`` Adam steps on eq. 29 -> (new state, ``(num_steps,)`` losses).

    Fused into one jitted ``lax.scan`` (accelerators) or one jitted call per
    step (CPUs), as :func:`fuses_steps` decides (the same steps; XLA may round differently).
    """
    config = _step_config(config)
    if fuses_steps(config):
        return _scanned_steps(graphdef, state, data, config, num_steps, use_labels)
    step_losses = []
    for _ in range(num_steps):
        state, loss = _single_step(graphdef, state, data, config, use_labels)
        step_losses.append(loss)
    return state, jnp.stack(step_losses)


def _g_of(g_values):
    grid = jnp.linspace(0.0, 1.0, g_values.shape[0], dtype=g_values.dtype)
    return lambda t: jnp.interp(t, grid, g_values)


def evaluate(graphdef, params, noisy, clean, labels, g_values, key, config: TrainConfig, use_labels: bool):
    """Denoise ``(B, H, W, C)`` ``noisy`` with the objective's sampler -> (denoised, ``{"ssim", "psnr", "mse"}``)."""
    return _evaluate(graphdef, params, noisy, clean, labels, g_values, key, _step_config(config), use_labels)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "use_labels"))
def _evaluate(graphdef, params, noisy, clean, labels, g_values, key, config: TrainConfig, use_labels: bool):
    net = network(graphdef, params, use_labels)
    denoised = config.objective.denoise(net, noisy, labels, key, g_values, config)
    return denoised, metrics.quality(denoised, clean)


# ----------------------------------------------------------------------------------------------
# The image-by-image driver


@dataclasses.dataclass
class TrainResult:
    """A finished (or budget-stopped) run.

    graphdef, state: the network and its training state.
    log: one record per evaluation: ``image``, ``step`` (on that image), ``global_step``,
      ``loss`` (mean over the last call), ``ssim``, ``psnr``, ``mse``, ``train_seconds`` (cumulative,
      evaluation included), ``precompute_seconds``, ``wall_seconds`` (their sum).
    images: one summary per image: ``image``, ``steps``, ``ssim``, ``psnr``, ``mse``, ``reached``,
      ``train_seconds``.
    config: the :class:`TrainConfig`.
    """

    graphdef: Any
    state: TrainState
    log: list
    images: list
    config: TrainConfig

    def score(self, labels=None, ema: bool = True) -> Callable:
        """The trained score ``s(x, t)`` (EMA weights unless ``ema=False``)."""
        params = self.state.ema if ema else self.state.params
        return score_function(self.graphdef, params, self.config, labels)

    @property
    def uses_labels(self) -> bool:
        return nnx.merge(self.graphdef, self.state.params).config.num_images > 0


class _Checkpoints:
    """Orbax checkpoints of (TrainState, JSON progress) in ``directory``, indexed by evaluation count."""

    def __init__(self, directory, fingerprint: dict):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.fingerprint = fingerprint
        self.manager = ocp.CheckpointManager(
            pathlib.Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
        )

    def save(self, evaluations: int, state: TrainState, progress: dict):
        args = self.ocp.args.Composite(
            state=self.ocp.args.StandardSave(state),
            progress=self.ocp.args.JsonSave({**progress, "fingerprint": self.fingerprint}),
        )
        self.manager.save(evaluations, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, template: TrainState):
        step = self.manager.latest_step()
        if step is None:
            return None
        progress = self.manager.restore(step, args=self.ocp.args.Composite(progress=self.ocp.args.JsonRestore()))[
            "progress"
        ]
        if progress.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"the checkpoint in {self.manager.directory} belongs to another run "
                f"({progress.get('fingerprint')} != {self.fingerprint}); use a new directory"
            )
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), template)
        restored = self.manager.restore(
            step, args=self.ocp.args.Composite(state=self.ocp.args.StandardRestore(abstract))
        )
        return restored["state"], progress


def _fingerprint(images, trajectories, unet_config, config, mode) -> dict:
    return {
        "mode": mode,
        "images": list(images.shape),
        "trajectories": list(trajectories.shape),
        "unet": repr(unet_config),
        "train": repr(config),
        "checksum": float(np.asarray(trajectories, np.float64).sum()),
    }


def train(
    images,
    trajectories,
    g_values,
    *,
    unet_config: UNetConfig = DEFAULT_UNET,
    config: TrainConfig = DEFAULT_TRAIN,
    key=None,
    mode: str = "image_by_image",
    checkpoint_dir=None,
    precompute_seconds: float = 0.0,
    progress: bool = True,
    on_evaluation: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a score U-Net on score-embedded trajectories until the denoising SSIM reaches the target.

    Args:
      images: ``(N, H, W, C)`` clean images in ``[0, 1]``.
      trajectories: ``(N, T+1, H, W, C)`` their score-embedded trajectories (:func:`fpjax.embed`).
      g_values: ``(T+1,)`` ``g(t_n)`` (:func:`fpjax.diffusion_schedule` of the FP config).
      unet_config: the network (``num_images = N`` gives each image its own embedding label).
      config: :class:`TrainConfig`.
      key: PRNG key (default ``jax.random.key(0)``): the weights, every step's batch and the checks' noise.
      mode: ``"image_by_image"`` (the paper's) or ``"mixed"`` (every batch from all images; the check averages
        the SSIM over all images).
      checkpoint_dir: orbax checkpoints go here; a run finding checkpoints of the same run resumes from the
        last one.
      precompute_seconds: the score pre-computation's wall time, for the log's time split.
      progress: a tqdm progress bar.
      on_evaluation: called with each log record (after it is checkpointed, when it is).
    Returns:
      :class:`TrainResult`.
    """
    images = jnp.asarray(images)
    trajectories = jnp.asarray(trajectories, images.dtype)
    if images.ndim != 4 or trajectories.ndim != 5 or trajectories.shape[:1] + trajectories.shape[2:] != images.shape:
        raise ValueError(
            f"need images (N, H, W, C) and trajectories (N, T+1, H, W, C); got {images.shape}, {trajectories.shape}"
        )
    if mode not in ("image_by_image", "mixed"):
        raise ValueError(f"mode must be 'image_by_image' or 'mixed', got {mode!r}")
    g_values = jnp.asarray(g_values, images.dtype)
    if g_values.shape != (trajectories.shape[1],):
        raise ValueError(f"g_values must have shape ({trajectories.shape[1]},), got {g_values.shape}")
    count, size, channels = images.shape[0], images.shape[1], images.shape[-1]
    use_labels = unet_config.num_images > 0
    if use_labels and unet_config.num_images < count:
        raise ValueError(f"unet_config.num_images = {unet_config.num_images} < {count} images")
    key = jax.random.key(0) if key is None else _typed(key)
    model_key, run_key, check_key = jax.random.split(key, 3)
    graphdef, params = create_model(unet_config, channels, size, model_key)
    state = init_state(params, config, run_key)

    progress_record = {
        "image": 0,
        "image_step": 0,
        "image_started": 0.0,
        "evaluations": 0,
        "train_seconds": 0.0,
        "log": [],
        "images": [],
    }
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = _Checkpoints(checkpoint_dir, _fingerprint(images, trajectories, unet_config, config, mode))
        restored = checkpoints.restore(state)
        if restored is not None:
            state, progress_record = restored
            progress_record.pop("fingerprint", None)

    groups = [[i] for i in range(count)] if mode == "image_by_image" else [list(range(count))]
    all_labels = jnp.arange(count) if use_labels else jnp.zeros(count, jnp.int32)
    bar = _progress_bar(len(groups), progress_record["image"], progress)
    clock = time.perf_counter() - progress_record["train_seconds"]
    try:
        for group_index in range(progress_record["image"], len(groups)):
            members = jnp.asarray(groups[group_index])
            labels = all_labels[members]
            current = -1 if mode == "mixed" else group_index
            data = TrainData(trajectories, all_labels, g_values, jnp.asarray(current, jnp.int32))
            noise_key, sampler_key = jax.random.split(jax.random.fold_in(check_key, group_index))
            clean = images[members]
            noisy = sampling.noisy_copy(noise_key, clean, config.noise_level)
            if progress_record["image_step"] == 0:
                progress_record["image_started"] = progress_record["train_seconds"]
            while True:
                state, step_losses = train_steps(graphdef, state, data, config, config.steps_per_call, use_labels)
                _, quality = evaluate(
                    graphdef, state.ema, noisy, clean, labels, g_values, sampler_key, config, use_labels
                )
                quality = {k: float(jnp.mean(v)) for k, v in quality.items()}
                loss = float(jnp.mean(step_losses))
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss is {loss} at step {int(state.step)} (image {group_index}); "
                        "lower the learning rate or enable gradient clipping"
                    )
                record, finished = _account(
                    progress_record, group_index, state, loss, quality, clock, config, precompute_seconds
                )
                record["precompute_seconds"] = precompute_seconds
                record["wall_seconds"] = precompute_seconds + record["train_seconds"]
                if checkpoints is not None and (
                    finished or progress_record["evaluations"] % config.checkpoint_every == 0
                ):
                    checkpoints.save(progress_record["evaluations"], state, progress_record)
                bar.set_postfix(
                    image=group_index, step=record["step"], ssim=f"{quality['ssim']:.3f}", loss=f"{loss:.3g}"
                )
                if on_evaluation is not None:
                    on_evaluation(record)
                if finished:
                    bar.update(1)
                    break
            if progress_record.get("out_of_time"):
                break
    finally:
        bar.close()
    return TrainResult(graphdef, state, progress_record["log"], progress_record["images"], config)


def _account(
    progress_record: dict, group_index: int, state, loss, quality, clock, config, precompute_seconds
) -> tuple[dict, bool]:
    """Log one evaluation in ``progress_record``; close the image when it reached the target or a budget."""
    progress_record["image_step"] += config.steps_per_call
    progress_record["evaluations"] += 1
    progress_record["train_seconds"] = time.perf_counter() - clock
    record = {
        "image": group_index,
        "step": progress_record["image_step"],
        "global_step": int(state.step),
        "loss": loss,
        **quality,
        "train_seconds": progress_record["train_seconds"],
    }
    progress_record["log"].append(record)
    reached = quality["ssim"] >= config.target_ssim
    image_seconds = progress_record["train_seconds"] - progress_record["image_started"]
    run_seconds = precompute_seconds + progress_record["train_seconds"]
    progress_record["out_of_time"] = config.max_total_seconds is not None and run_seconds >= config.max_total_seconds
    out_of_budget = (
        progress_record["image_step"] >= config.max_steps
        or (config.max_seconds is not None and image_seconds >= config.max_seconds)
        or progress_record["out_of_time"]
    )
    finished = reached or out_of_budget
    if finished:
        summary = {"image": group_index, "steps": progress_record["image_step"], **quality}
        progress_record["images"].append({**summary, "reached": bool(reached), "train_seconds": image_seconds})
        progress_record["image"] = group_index + 1
        progress_record["image_step"] = 0
    return record, finished


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="image", disable=not enabled)


def save_log(result: TrainResult, path) -> None:
    """The evaluation log and the per-image summaries as JSON."""
    pathlib.Path(path).write_text(json.dumps({"log": result.log, "images": result.images}, indent=1))
