"""A Flax NNX U-Net for NHWC images, conditioned on time (and optionally on an image index).

The architecture of Ho et al. (DDPM) as the papers use it: residual blocks
(GroupNorm, SiLU, 3x3 convolutions) into which a time embedding is added,
self-attention at the lower resolutions, strided-convolution downsampling,
nearest-neighbour upsampling, and skip connections from every block of the
down path to the up path. The time embedding is sinusoidal (DDPM) or
``"linear"`` (the score-embedding paper: ``t`` through a dense layer), followed
by a two-layer MLP; an optional learned per-image embedding is added to it
(the score-embedding paper's multi-image training).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet` (hashable; usable as a static argument).

    Attributes:
      channels: width of the first level.
      channel_mult: width multiplier per level; the image is halved between levels.
      num_res_blocks: residual blocks per level.
      attention_resolutions: spatial sizes (e.g. ``(16,)``) at which blocks get self-attention.
      num_heads: attention heads.
      dropout: dropout rate inside residual blocks (active only when the model is in train mode).
      time_embedding: ``"sinusoidal"`` or ``"linear"``.
      num_images: size of the per-image embedding table; 0 for none.
      groups: GroupNorm groups (must divide every width).
      out_channels: output channels; ``None`` for the input's.
    """

    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (8,)
    num_heads: int = 1
    dropout: float = 0.0
    time_embedding: Literal["sinusoidal", "linear"] = "sinusoidal"
    num_images: int = 0
    groups: int = 8
    out_channels: int | None = None

    def __post_init__(self):
        if self.time_embedding not in ("sinusoidal", "linear"):
            raise ValueError(f"time_embedding must be 'sinusoidal' or 'linear', got {self.time_embedding!r}")
        for name in ("channels", "num_heads", "groups", "num_res_blocks"):
            if not getattr(self, name) > 0:
                raise ValueError(f"UNetConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not all(m > 0 for m in self.channel_mult) or not all(r > 0 for r in self.attention_resolutions):
            raise ValueError("UNetConfig.channel_mult and attention_resolutions must hold positive integers")
        widths = [self.channels * m for m in self.channel_mult]
        if any(w % self.groups for w in widths):
            raise ValueError(f"groups={self.groups} must divide every level width {widths}")
        if not self.channel_mult or self.num_res_blocks < 1:
            raise ValueError("need at least one level and one residual block per level")


# The DDPM CIFAR-10 U-Net (Ho et al. 2020, 35.7M parameters): for GPUs/TPUs, not for CPU tests.
DDPM_CIFAR10 = UNetConfig(
    channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, groups=32
)


def sinusoidal_embedding(t, dim: int, scale: float = 1000.0):
    """``(B,)`` times in ``[0, 1]`` -> ``(B, dim)`` sinusoidal features of ``scale * t`` (DDPM's)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    angles = scale * t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, temb_dim: int, config: UNetConfig, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(cin, num_groups=config.groups, rngs=rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.temb = nnx.Linear(temb_dim, cout, rngs=rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=config.groups, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout)
        # Zero-initialised last convolution: every block starts as the identity (DDPM's init).
        self.conv2 = nnx.Conv(cout, cout, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.skip = nnx.Conv(cin, cout, (1, 1), rngs=rngs) if cin != cout else None

    def __call__(self, x, temb, dropout_key=None):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.temb(nnx.silu(temb))[:, None, None, :]
        h = nnx.silu(self.norm2(h))
        if dropout_key is not None and self.dropout.rate > 0:
            h = self.dropout(h, deterministic=False, rngs=dropout_key)
        h = self.conv2(h)
        return h + (x if self.skip is None else self.skip(x))


class AttentionBlock(nnx.Module):
    def __init__(self, channels: int, config: UNetConfig, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=config.groups, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            config.num_heads, channels, out_kernel_init=nnx.initializers.zeros, decode=False, keep_rngs=False, rngs=rngs
        )

    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = self.norm(x).reshape(b, h * w, c)
        return x + self.attention(tokens).reshape(b, h, w, c)


class Level(nnx.Module):
    """The residual (and attention) blocks of one resolution."""

    def __init__(self, widths, temb_dim: int, attention: bool, config: UNetConfig, rngs: nnx.Rngs):
        self.blocks = nnx.List([ResBlock(cin, cout, temb_dim, config, rngs) for cin, cout in widths])
        self.attention = nnx.List([AttentionBlock(cout, config, rngs) for _, cout in widths] if attention else [])


class UNet(nnx.Module):
    """``s_theta(x, t)``: ``(B, H, W, C)`` images and ``(B,)`` times -> ``(B, H, W, C_out)``.

    ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
    ``labels`` (``(B,)`` ints) select the per-image embedding when
    ``config.num_images > 0``.
    """

    def __init__(self, config: UNetConfig, in_channels: int, image_size: int, *, rngs: nnx.Rngs):
        self.config = config
        self.image_size = image_size
        levels = len(config.channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image size {image_size} is not divisible by 2**{levels - 1} (channel_mult has {levels})")
        c0, temb_dim = config.channels, 4 * config.channels
        self.time_in = nnx.Linear(c0 if config.time_embedding == "sinusoidal" else 1, temb_dim, rngs=rngs)
        self.time_out = nnx.Linear(temb_dim, temb_dim, rngs=rngs)
        self.image_embedding = nnx.Embed(config.num_images, temb_dim, rngs=rngs) if config.num_images else None
        self.conv_in = nnx.Conv(in_channels, c0, (3, 3), rngs=rngs)

        size, width, skips = image_size, c0, [c0]
        down, downsample = [], []
        for i, mult in enumerate(config.channel_mult):
            out = c0 * mult
            widths = [(width, out)] + [(out, out)] * (config.num_res_blocks - 1)
            down.append(Level(widths, temb_dim, size in config.attention_resolutions, config, rngs))
            width = out
            skips += [out] * config.num_res_blocks
            if i < levels - 1:
                downsample.append(nnx.Conv(width, width, (3, 3), strides=(2, 2), rngs=rngs))
                skips.append(width)
                size //= 2
        self.down, self.downsample = nnx.List(down), nnx.List(downsample)
        self.mid = Level([(width, width), (width, width)], temb_dim, False, config, rngs)
        self.mid_attention = AttentionBlock(width, config, rngs)

        up, upsample = [], []
        for i, mult in reversed(list(enumerate(config.channel_mult))):
            out = c0 * mult
            widths = []
            for _ in range(config.num_res_blocks + 1):
                widths.append((width + skips.pop(), out))
                width = out
            up.append(Level(widths, temb_dim, size in config.attention_resolutions, config, rngs))
            if i > 0:
                upsample.append(nnx.Conv(width, width, (3, 3), rngs=rngs))
                size *= 2
        self.up, self.upsample = nnx.List(up), nnx.List(upsample)
        self.norm_out = nnx.GroupNorm(width, num_groups=config.groups, rngs=rngs)
        self.conv_out = nnx.Conv(
            width, config.out_channels or in_channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    def time_features(self, t, labels=None):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (t.shape[0],) if jnp.ndim(t) else (1,))
        if self.config.time_embedding == "sinusoidal":
            features = sinusoidal_embedding(t, self.config.channels)
        else:
            features = t[:, None]
        temb = self.time_out(nnx.silu(self.time_in(features)))
        if self.image_embedding is not None:
            if labels is None:
                raise ValueError("this U-Net has a per-image embedding (num_images > 0): pass labels")
            temb = temb + self.image_embedding(labels)
        return temb

    def __call__(self, x, t, labels=None, dropout_key=None):
        """Dropout (``config.dropout > 0``) is applied only when a ``dropout_key`` is given (training)."""
        if x.ndim != 4:
            raise ValueError(f"expected NHWC images (B, H, W, C), got shape {x.shape}")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        temb = self.time_features(t, labels).astype(x.dtype)
        keys = _Keys(dropout_key)
        h = self.conv_in(x)
        hs = [h]
        for i, level in enumerate(self.down):
            h = _run_level(level, h, temb, hs, keys)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid.blocks[0](h, temb, keys.next())
        h = self.mid_attention(h)
        h = self.mid.blocks[1](h, temb, keys.next())
        for i, level in enumerate(self.up):
            for j, block in enumerate(level.blocks):
                h = block(jnp.concatenate([h, hs.pop()], axis=-1), temb, keys.next())
                if len(level.attention):
                    h = level.attention[j](h)
            if i < len(self.upsample):
                b, hh, ww, c = h.shape
                h = self.upsample[i](jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest"))
        return self.conv_out(nnx.silu(self.norm_out(h)))


class _Keys:
    """A distinct dropout key for each residual block of one forward pass (``None`` when deterministic)."""

    def __init__(self, key):
        self.key, self.count = key, 0

    def next(self):
        self.count += 1
        return None if self.key is None else jax.random.fold_in(self.key, self.count)


def _run_level(level: Level, h, temb, hs, keys: _Keys):
    for j, block in enumerate(level.blocks):
        h = block(h, temb, keys.next())
        if len(level.attention):
            h = level.attention[j](h)
        hs.append(h)
    return h
