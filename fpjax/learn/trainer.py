"""Training a score U-Net on score-embedded trajectories, image by image, with SSIM early stopping.

The cross-matrix paper's section 4.2: for each image, train on its
score-embedded trajectory ``x^0..x^T`` with the loss of eq. 29 (Optax Adam,
learning rate 1e-3) until the *denoising SSIM* reaches a target, then go on to
the next image with the same network. The denoising SSIM: the clean image plus
a fixed noise draw (``noise_level``) is denoised with the objective's sampler
(:mod:`fpjax.diffusion.sampling` for fpjax's; a fixed sampler key too) and compared
with the clean image (:func:`fpjax.eval.metrics.ssim`). Training steps are fused
``steps_per_call`` at a time into one jitted ``lax.scan``; an evaluation follows every call.

What is trained is the configuration's *objective* (:mod:`fpjax.learn.objectives`), bound
to the forward SDE of the trajectories (:mod:`fpjax.diffusion.sde`): the loss weighting,
the check's sampler, the score-FPE regulariser and :meth:`TrainResult.score` all take
theirs from it.

Everything a run needs to continue is a pytree (:class:`TrainState`: weights,
optimizer state, EMA, step counter, base key); each step's randomness is
``fold_in(key, step)``, so a run resumed from an orbax checkpoint
(:mod:`fpjax.learn.checkpoints`) continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from fpjax import devices, files
from fpjax.diffusion import sampling
from fpjax.diffusion import sde as sde_lib
from fpjax.eval import metrics
from fpjax.learn import optim
from fpjax.learn import sources as sources_lib
from fpjax.learn.checkpoints import Checkpoints, fingerprint
from fpjax.learn.models.unet import UNet, UNetConfig
from fpjax.learn.objectives import Batch, EmbeddedDenoising, TrainData
from fpjax.solver.problem import FPConfig


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
      target_ssim: early-stopping target of the denoising SSIM, in ``(-1, 1]`` (SSIM's range); ``None``: no early
        stopping (train to ``max_steps`` or the time limits).
      max_steps: step budget per image (per run for mixed training).
      max_seconds: wall-time budget per image (``None``: none).
      max_total_seconds: wall-time budget of the whole run, pre-computation included (``None``: none);
        the images not reached when it runs out are not trained.
      noise_level: standard deviation of the denoising check's noise.
      sampler: the denoising check's sampler.
      checkpoint_every: evaluations between checkpoints (also at every image's end and the run's end).
      check_images: mixed training only: the denoising check's images, evenly spaced over the set (``None``: all
        of them; a large set needs a sample, the check denoises every one of them at each evaluation).
      objective: what is trained (:mod:`fpjax.learn.objectives`): :class:`EmbeddedDenoising` (default),
        :class:`~fpjax.learn.objectives.FPRegularised` or :class:`fpjax.learn.ddpm.DDPM`. :func:`train` binds it
        to the SDE of the trajectories (:func:`bind_sde`); the :class:`TrainResult`'s config holds the bound one.
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
    parametrization: Literal["noise", "score"] = "noise"
    steps_per_call: int = 25
    target_ssim: float | None = 0.9
    max_steps: int = 2000
    max_seconds: float | None = None
    max_total_seconds: float | None = None
    noise_level: float = 0.5
    sampler: sampling.SamplerConfig = sampling.SamplerConfig(steps=50, method="ode")
    checkpoint_every: int = 10
    check_images: int | None = None
    fuse_steps: bool | None = None
    objective: Any = None  # EmbeddedDenoising() unless given

    def __post_init__(self):
        if self.parametrization not in ("noise", "score"):
            raise ValueError(f"parametrization must be 'noise' or 'score', got {self.parametrization!r}")
        for name in ("learning_rate", "grad_clip", "batch_size", "steps_per_call", "max_steps", "max_seconds",
                     "max_total_seconds", "noise_level", "checkpoint_every", "check_images"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not value > 0:  # NaN too
                raise ValueError(f"TrainConfig.{name} must be positive, got {value!r}")
        if self.objective is None:
            object.__setattr__(self, "objective", EmbeddedDenoising())
        if self.target_ssim is not None and not -1.0 < self.target_ssim <= 1.0:
            raise ValueError(
                f"target_ssim must be in (-1, 1] (an SSIM), got {self.target_ssim}; None trains without early stopping"
            )
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


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The configuration's Adam (:func:`fpjax.learn.optim.adam`)."""
    return optim.adam(config.learning_rate, config.warmup_steps, config.grad_clip)


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


def bind_sde(config: TrainConfig, sde) -> TrainConfig:
    """``config`` with its objective bound to ``sde``: an :class:`~fpjax.diffusion.sde.SDE`, an
    :class:`fpjax.FPConfig` or its ``g`` (anything :func:`fpjax.diffusion.sde.as_sde` takes); ``None`` leaves
    ``config`` as it is (an objective with its own SDE, such as DDPM's, or one bound already)."""
    if sde is None:
        return config
    return dataclasses.replace(config, objective=config.objective.with_sde(sde_lib.as_sde(sde)))


def score_function(graphdef, params, config: TrainConfig, labels=None, dropout_key=None) -> Callable:
    """``s(x, t)`` of the network with weights ``params``, as ``config.objective`` defines it from the network
    output (``labels``: ``(B,)`` or ``None``)."""
    net = network(graphdef, params, labels is not None, dropout_key)
    return config.objective.score(net, labels, config)


def network(graphdef, params, use_labels: bool, dropout_key=None) -> Callable:
    """``net(x, t, labels)``: the raw network output (``labels`` ignored without a per-image embedding)."""
    model = nnx.merge(graphdef, params)
    return lambda x, t, labels: model(x, t, labels if use_labels else None, dropout_key=dropout_key)


DEFAULT_TRAIN = TrainConfig()
DEFAULT_UNET = UNetConfig()


# ----------------------------------------------------------------------------------------------
# compiled steps and the evaluation


def _one_step(graphdef, config: TrainConfig, points, resident, T: int, use_labels: bool):
    """One Adam step on the points of one draw: ``one_step(state, (payload, draw))``, the points ``x`` from the
    source's ``points(resident, payload, draw)`` (:mod:`fpjax.learn.sources`)."""
    optimizer = make_optimizer(config)

    def one_step(state: TrainState, inputs):
        payload, draw = inputs
        key = jax.random.fold_in(_typed(state.key), state.step)
        batch_key, dropout_key = jax.random.split(key)
        x = points(resident, payload, draw)
        labels = draw.index if use_labels else jnp.zeros_like(draw.index)
        batch = Batch(x, draw.level.astype(x.dtype) / T, labels)

        def loss_fn(params):
            net = network(graphdef, params, use_labels, dropout_key)
            return config.objective.batch_loss(net, batch_key, batch, config, T)

        params, opt_state, loss = optim.gradient_step(optimizer, loss_fn, state.params, state.opt_state)
        ema = params if config.ema_decay is None else optax.incremental_update(params, state.ema, 1 - config.ema_decay)
        return TrainState(params, opt_state, ema, state.step + 1, state.key), loss

    return one_step


_STATIC = ("graphdef", "config", "points", "T", "use_labels")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _scanned_steps(graphdef, state, resident, payload, draws, config, points, T, use_labels):
    return jax.lax.scan(_one_step(graphdef, config, points, resident, T, use_labels), state, (payload, draws))


@functools.partial(jax.jit, static_argnames=_STATIC)
def _single_step(graphdef, state, resident, payload, draw, config, points, T, use_labels):
    return _one_step(graphdef, config, points, resident, T, use_labels)(state, (payload, draw))


@functools.partial(jax.jit, static_argnames=("num_steps", "count", "T", "config"))
def _step_draws(key, first_step, current, num_steps: int, count: int, T: int, config: TrainConfig):
    def draw(step):
        batch_key, _ = jax.random.split(jax.random.fold_in(_typed(key), step))  # the step's own key split
        return config.objective.draw(batch_key, count, T, current, config)

    return jax.vmap(draw)(first_step + jnp.arange(num_steps))


def step_draws(state: TrainState, current: int, num_steps: int, count: int, T: int, config: TrainConfig):
    """The :class:`~fpjax.learn.objectives.Draw` of each of the next ``num_steps`` steps from ``state`` (leaves
    ``(num_steps, M)``, NumPy): what they will read, known before they run (their keys are
    ``fold_in(key, step)``). ``current``: the image trained, or -1 (mixed)."""
    draws = _step_draws(state.key, state.step, jnp.asarray(current, jnp.int32), num_steps, count, T,
                        _step_config(config))  # fmt: skip
    return jax.tree.map(np.asarray, draws)


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
        steps_per_call=1, check_images=None,
    )  # fmt: skip


def _as_source(data):
    """A data source (:mod:`fpjax.learn.sources`) as it is, or :class:`TrainData`'s trajectories in memory."""
    if isinstance(data, TrainData):
        return sources_lib.InMemory(None, data.trajectories)
    return data


def local_draws(draws, mesh):
    """This process's rows of ``(S, M)`` draws (all of them in a lone process or without a mesh): what it reads."""
    if mesh is None or jax.process_count() == 1:
        return draws
    rows = devices.process_rows(np.shape(draws.index)[-1], mesh)
    return jax.tree.map(lambda leaf: leaf[..., rows], draws)


def train_steps(graphdef, state: TrainState, data, config: TrainConfig, num_steps: int, use_labels: bool,
                current: int | None = None, payload=None, draws=None, mesh=None):  # fmt: skip
    """``num_steps`` Adam steps on ``config.objective``'s loss -> (new state, ``(num_steps,)`` losses).

    ``data``: a data source (:mod:`fpjax.learn.sources`) or :class:`TrainData` (trajectories in memory, its
    ``current`` the image trained). ``current``: the image trained (-1: all; default ``data.current`` or -1).
    ``draws`` and their ``payload``: the steps' :func:`step_draws` and ``data.fetch(draws)``, when read ahead.
    ``config.objective`` must be bound to its SDE (:func:`bind_sde`). Fused into one jitted ``lax.scan``
    (accelerators) or one jitted call per step (CPUs), as :func:`fuses_steps` decides (the same steps; XLA may
    round differently).

    ``mesh``: a data mesh (:func:`fpjax.devices.data_mesh`) whose devices share each step's batch: the draws and
    the payload (this process's rows, :func:`local_draws`) are split over it along the batch axis, and ``state``
    and the source's resident data must be replicated on it (:func:`fpjax.devices.replicated`; :func:`train`
    does both). ``None``: everything on the default device.
    """
    config = _step_config(config)
    if current is None:
        current = int(data.current) if isinstance(data, TrainData) else -1
    source = _as_source(data)
    if draws is None:
        draws = step_draws(state, current, num_steps, source.count, source.T, config)
        payload = source.fetch(local_draws(draws, mesh))
    static = dict(config=config, points=source.points, T=source.T, use_labels=use_labels)
    place = (lambda tree, axis, local: tree) if mesh is None else functools.partial(devices.shard_batch, mesh=mesh)
    if fuses_steps(config):
        return _scanned_steps(graphdef, state, source.resident, place(payload, axis=1, local=True),
                              place(draws, axis=1, local=False), **static)  # fmt: skip
    step_losses = []
    for s in range(num_steps):
        at = lambda leaf, s=s: leaf[s]  # noqa: E731
        step_payload = place(jax.tree.map(at, payload), axis=0, local=True)
        step_draw = place(jax.tree.map(at, draws), axis=0, local=False)
        state, loss = _single_step(graphdef, state, source.resident, step_payload, step_draw, **static)
        step_losses.append(loss)
    return state, jnp.stack(step_losses)


def evaluate(graphdef, params, noisy, clean, labels, sde, key, config: TrainConfig, use_labels: bool):
    """Denoise ``(B, H, W, C)`` ``noisy`` with the objective's sampler -> (denoised, ``{"ssim", "psnr", "mse"}``).

    ``sde``: what the objective is bound to first (:func:`bind_sde`; e.g. the FP config, or its
    :func:`fpjax.diffusion_schedule`), or ``None`` when ``config`` is already bound (a :class:`TrainResult`'s).
    """
    config = config if sde is None else bind_sde(config, sde)
    return _evaluate(graphdef, params, noisy, clean, labels, key, _step_config(config), use_labels)


@functools.partial(jax.jit, static_argnames=("graphdef", "config", "use_labels"))
def _evaluate(graphdef, params, noisy, clean, labels, key, config: TrainConfig, use_labels: bool):
    net = network(graphdef, params, use_labels)
    denoised = config.objective.denoise(net, noisy, labels, key, config)
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
    config: the :class:`TrainConfig`, its objective bound to the trajectories' SDE.
    """

    graphdef: Any
    state: TrainState
    log: list
    images: list
    config: TrainConfig

    @property
    def sde(self) -> sde_lib.SDE:
        """The forward SDE of the trained score (the objective's): sample and check it with this one."""
        return self.config.objective.sde

    def score(self, labels=None, ema: bool = True) -> Callable:
        """The trained score ``s(x, t)`` as the objective defines it (EMA weights unless ``ema=False``)."""
        params = self.state.ema if ema else self.state.params
        return score_function(self.graphdef, params, self.config, labels)

    @property
    def uses_labels(self) -> bool:
        return nnx.merge(self.graphdef, self.state.params).config.num_images > 0


class _Run(NamedTuple):
    """What stays fixed during one call of :func:`train`."""

    graphdef: Any
    config: TrainConfig
    source: Any  # the data source (fpjax.learn.sources)
    prefetch: sources_lib.Prefetcher | None  # None: the source reads nothing (in memory)
    use_labels: bool
    check_key: jax.Array
    mode: str
    checkpoints: Checkpoints | None
    precompute_seconds: float
    on_evaluation: Callable[[dict], None] | None
    bar: Any
    clock: float  # perf_counter() at the (resumed) run's start
    mesh: Any  # the devices sharing each step (fpjax.devices.data_mesh)


def _bound(config: TrainConfig, sde, T: int) -> TrainConfig:
    """``config`` with its objective bound to ``sde`` (:func:`bind_sde`), checked for ``T`` steps."""
    config = bind_sde(config, sde)
    if config.objective.sde is None:
        raise ValueError(f"{config.objective} needs the SDE of the trajectories: pass their FP config as sde")
    if hasattr(config.objective, "check_weights"):  # an objective that weights by the SDE's g: finite weights
        config.objective.check_weights(T)
    return config


def _progress_bar(mode: str, groups: int, config: TrainConfig, record: dict, progress: bool):
    """Images trained (image by image) or, mixed (one group), its steps: either way the bar shows an ETA."""
    if mode == "mixed":
        return tqdm(total=config.max_steps, initial=record["image_step"], desc="training", unit="step",
                    disable=not progress)  # fmt: skip
    return tqdm(total=groups, initial=record["image"], desc="training", unit="image", disable=not progress)


def _placed(source, mesh):
    """``source`` with its resident data (trajectories in memory) replicated on the mesh's devices."""
    if source.resident is None:
        return source
    placed = copy.copy(source)
    placed.resident = devices.replicated(source.resident, mesh)
    return placed


def _new_progress() -> dict:
    return {"image": 0, "image_step": 0, "image_started": 0.0, "evaluations": 0, "train_seconds": 0.0, "log": [],
            "images": []}  # fmt: skip


def _trajectory_sde(spec, levels: int) -> sde_lib.SDE | None:
    """The SDE of ``levels = T+1`` trajectory levels from what :func:`train` was given (``None``: none given)."""
    if spec is None:
        return None
    if isinstance(spec, FPConfig) and spec.T + 1 != levels:
        raise ValueError(f"the FP config has T = {spec.T}, the trajectories {levels} levels (T+1)")
    if not (isinstance(spec, sde_lib.SDE | FPConfig) or callable(spec)) and np.ndim(spec) == 1:
        if np.shape(spec) != (levels,):
            raise ValueError(f"g_values must have shape ({levels},), got {np.shape(spec)}")
    return sde_lib.as_sde(spec, levels - 1)


def _is_source(data) -> bool:
    return all(hasattr(data, name) for name in ("fetch", "points", "resident", "images", "fingerprint"))


def _check_inputs(images, trajectories, sde, unet_config: UNetConfig, mode: str):
    """``(source, sde)``: the data source of what :func:`train` was given and the SDE, or a ``ValueError`` naming
    what does not fit."""
    if _is_source(trajectories):
        source = trajectories
    else:
        images = jnp.asarray(images)
        trajectories = jnp.asarray(trajectories, images.dtype)
        stacked = trajectories.shape[:1] + trajectories.shape[2:]
        if images.ndim != 4 or trajectories.ndim != 5 or stacked != images.shape:
            raise ValueError(
                f"need images (N, H, W, C) and trajectories (N, T+1, H, W, C); got {images.shape}, {trajectories.shape}"
            )
        source = sources_lib.InMemory(images, trajectories)
    if mode not in ("image_by_image", "mixed"):
        raise ValueError(f"mode must be 'image_by_image' or 'mixed', got {mode!r}")
    if 0 < unet_config.num_images < source.count:
        raise ValueError(f"unet_config.num_images = {unet_config.num_images} < {source.count} images")
    return source, _trajectory_sde(sde, source.T + 1)


def train(
    images,
    trajectories,
    sde,
    *,
    unet_config: UNetConfig = DEFAULT_UNET,
    config: TrainConfig = DEFAULT_TRAIN,
    key=None,
    mode: str = "image_by_image",
    checkpoint_dir=None,
    precompute_seconds: float = 0.0,
    progress: bool = True,
    on_evaluation: Callable[[dict], None] | None = None,
    mesh=None,
) -> TrainResult:
    """Train a score U-Net on score-embedded trajectories until the denoising SSIM reaches the target.

    Args:
      images: ``(N, H, W, C)`` clean images in ``[0, 1]`` (``None`` when ``trajectories`` is a data source: it
        has them).
      trajectories: ``(N, T+1, H, W, C)`` their score-embedded trajectories (:func:`fpjax.embed`), held in memory;
        or a data source (:mod:`fpjax.learn.sources`: an FP store read batch by batch, or trajectories computed
        on the fly), from which each step reads only the points it draws.
      sde: the forward SDE the trajectories were made with: the :class:`fpjax.FPConfig` of the embedding (best),
        an :class:`~fpjax.diffusion.sde.SDE`, or its ``g`` as ``(T+1,)`` values (:func:`fpjax.diffusion_schedule`
        of the FP config, taken piecewise linear), a scalar or a function of ``t``. The objective is bound to it
        (:func:`bind_sde`); ``None`` for an objective with its own SDE (DDPM) or one given it already.
      unet_config: the network (``num_images = N`` gives each image its own embedding label).
      config: :class:`TrainConfig`.
      key: PRNG key (default ``jax.random.key(0)``): the weights, every step's batch and the checks' noise.
      mode: ``"image_by_image"`` (the paper's) or ``"mixed"`` (every batch from all images; the check averages
        the SSIM over all images, or ``config.check_images`` of them).
      checkpoint_dir: orbax checkpoints go here; a run finding checkpoints of the same run resumes from the
        last one.
      precompute_seconds: the score pre-computation's wall time, for the log's time split.
      progress: a tqdm progress bar.
      on_evaluation: called with each log record (after it is checkpointed, when it is).
      mesh: the devices that share each step (:func:`fpjax.devices.data_mesh`; default every device of every
        process): each step's global batch of ``config.batch_size`` (a multiple of the device count) is split
        over them, the parameters and optimiser state replicated. One device is a mesh of one.
    Returns:
      :class:`TrainResult`.
    """
    mesh = devices.data_mesh() if mesh is None else mesh
    precompute_seconds = devices.agreed(precompute_seconds)  # process 0's: the budgets decide alike everywhere
    devices.check_divisible(config.batch_size, mesh, "the training batch (TrainConfig.batch_size, --batch-size)")
    source, sde = _check_inputs(images, trajectories, sde, unet_config, mode)
    config = _bound(config, sde, source.T)
    count, use_labels = source.count, unet_config.num_images > 0
    model_key, run_key, check_key = jax.random.split(jax.random.key(0) if key is None else _typed(key), 3)
    graphdef, params = create_model(unet_config, source.shape[-1], source.shape[0], model_key)
    state = devices.replicated(init_state(params, config, run_key), mesh)  # placed first: a restore follows it
    checkpoints, state, record = _resume(checkpoint_dir, state, source, unet_config, config, mode)
    groups = count if mode == "image_by_image" else 1
    bar = _progress_bar(mode, groups, config, record, progress)
    source = _placed(source, mesh)  # the state is placed already (a restored one as its template)
    select = functools.partial(local_draws, mesh=mesh)  # what this process reads of each draw
    prefetch = None if source.resident is not None else sources_lib.Prefetcher(source, select)
    run = _Run(graphdef, config, source, prefetch, use_labels, check_key, mode, checkpoints, precompute_seconds,
               on_evaluation, bar, time.perf_counter() - record["train_seconds"], mesh)  # fmt: skip
    state = _train_groups(run, groups, state, record)
    return TrainResult(graphdef, state, record["log"], record["images"], config)


def _train_groups(run: _Run, groups: int, state: TrainState, record: dict) -> TrainState:
    """Every group from the record's on (image by image: each image; mixed: the one), then the bar and the
    prefetch thread closed, whatever stopped the run."""
    try:
        for group_index in range(record["image"], groups):
            state = _train_group(run, group_index, state, record)
            if record.get("out_of_time"):
                break
    finally:
        run.bar.close()
        if run.prefetch is not None:
            run.prefetch.close()
    return state


def _resume(checkpoint_dir, state: TrainState, source, unet_config, config, mode):
    """``(checkpoints, state, progress record)``: no checkpoints and a fresh start without ``checkpoint_dir``, else
    its checkpoints and the last one's state and record (a fresh start if it has none)."""
    if checkpoint_dir is None:
        return None, state, _new_progress()
    checkpoints = Checkpoints(checkpoint_dir, fingerprint(source, unet_config, config, mode))
    restored = checkpoints.restore(state)
    return (checkpoints, state, _new_progress()) if restored is None else (checkpoints, *restored)


def evenly_spaced(count: int, sample: int | None) -> np.ndarray:
    """``sample`` indices evenly spaced over ``0..count-1``, the first and last included (``None``: all)."""
    if sample is None or sample >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, sample).round().astype(int))


def check_members(count: int, mode: str, group_index: int, sample: int | None) -> np.ndarray:
    """The images the denoising check of group ``group_index`` denoises: the image itself (image by image), or
    all ``count`` images (mixed), or ``sample`` of them evenly spaced."""
    return np.array([group_index]) if mode == "image_by_image" else evenly_spaced(count, sample)


def _call_steps(run: _Run, state: TrainState, current: int):
    """One call's ``steps_per_call`` steps, reading their points (read ahead), and the next call's read started."""
    config, source = run.config, run.source
    steps = config.steps_per_call
    draws_from = lambda state: step_draws(state, current, steps, source.count, source.T, config)  # noqa: E731
    if run.prefetch is None:
        return train_steps(run.graphdef, state, source, config, steps, run.use_labels, current, None,
                           draws_from(state), run.mesh)  # fmt: skip
    first = int(state.step)
    draws, payload = run.prefetch.get((first, current), lambda: draws_from(state))
    run.prefetch.start((first + steps, current), draws_from(state._replace(step=state.step + steps)))
    return train_steps(run.graphdef, state, source, config, steps, run.use_labels, current, payload, draws, run.mesh)


def _train_group(run: _Run, group_index: int, state: TrainState, record: dict) -> TrainState:
    """Train on one image (image by image) or on all (mixed) until the target or a budget; log every evaluation."""
    config = run.config
    current = -1 if run.mode == "mixed" else group_index
    members = check_members(run.source.count, run.mode, group_index, config.check_images)
    noise_key, sampler_key = jax.random.split(jax.random.fold_in(run.check_key, group_index))
    clean = jnp.asarray(run.source.images(members))
    labels = jnp.asarray(members, jnp.int32) if run.use_labels else jnp.zeros(len(members), jnp.int32)
    noisy = sampling.noisy_copy(noise_key, clean, config.noise_level)
    noisy, clean, labels = devices.spread((noisy, clean, labels), run.mesh)  # the check's images over the devices
    if record["image_step"] == 0:
        record["image_started"] = record["train_seconds"]
    while True:
        state, step_losses = _call_steps(run, state, current)
        _, quality = evaluate(run.graphdef, state.ema, noisy, clean, labels, None, sampler_key, config,
                              run.use_labels)  # fmt: skip
        quality = {k: float(jnp.mean(v)) for k, v in quality.items()}
        loss = float(jnp.mean(step_losses))
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {int(state.step)} (image {group_index}); "
                "lower the learning rate or enable gradient clipping"
            )
        entry, finished = _account(record, group_index, state, loss, quality, run.clock, config, run.precompute_seconds)
        if run.checkpoints is not None and (finished or record["evaluations"] % config.checkpoint_every == 0):
            run.checkpoints.save(record["evaluations"], state, record)
        run.bar.set_postfix(image=group_index, step=entry["step"], ssim=f"{quality['ssim']:.3f}", loss=f"{loss:.3g}")
        if run.mode == "mixed":
            run.bar.update(max(min(entry["step"], run.bar.total) - run.bar.n, 0))
        if run.on_evaluation is not None:
            run.on_evaluation(entry)
        if finished:
            run.bar.update(1 if run.mode != "mixed" else 0)
            return state


def _account(
    progress_record: dict, group_index: int, state, loss, quality, clock, config, precompute_seconds
) -> tuple[dict, bool]:
    """Log one evaluation in ``progress_record``; close the image when it reached the target or a budget."""
    progress_record["image_step"] += config.steps_per_call
    progress_record["evaluations"] += 1
    progress_record["train_seconds"] = devices.agreed(time.perf_counter() - clock)  # the budgets' decisions agree
    record = {
        "image": group_index,
        "step": progress_record["image_step"],
        "global_step": int(state.step),
        "loss": loss,
        **quality,
        "train_seconds": progress_record["train_seconds"],
        "precompute_seconds": precompute_seconds,
        "wall_seconds": precompute_seconds + progress_record["train_seconds"],
    }
    progress_record["log"].append(record)
    reached = config.target_ssim is not None and quality["ssim"] >= config.target_ssim
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


def save_log(result: TrainResult, path) -> None:
    """The evaluation log and the per-image summaries as JSON."""
    files.write_json(path, {"log": result.log, "images": result.images})
