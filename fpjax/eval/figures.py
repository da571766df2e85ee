"""Figures a person would rather look at than read: log-densities and scores over time."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from fpjax.solver.scores import pixel_score


def _interior(field):
    return field[1:-1, 1:-1] if min(field.shape) > 4 else field


def plot_solutions(images, m, names=None, steps=None, boundary="zero", component="sum", title=None):
    """One block of rows per image: the image, ``m`` and the pixel score at a few time steps.

    Colour limits are percentiles of the interior (without the outermost
    pixel ring), so the jump that the zero boundary creates at the edge does
    not hide the image's structure; edge values beyond them saturate.

    Args:
      images: ``(N, H, W, C)`` in ``[0, 1]``.
      m: ``(N, T+1, H, W)`` log-density trajectories (one channel per image).
      steps: time indices to show (default ``0, T/10, T/2, T``).
    Returns:
      The matplotlib figure.
    """
    images, m = np.asarray(images), np.asarray(m)
    n, t_plus_1 = m.shape[:2]
    T = t_plus_1 - 1
    steps = sorted({0, max(T // 10, 1), T // 2, T}) if steps is None else list(steps)
    scores = np.asarray(pixel_score(m[:, steps], component, boundary, channel_axis=None))  # fields
    fig, axes = plt.subplots(2 * n, len(steps) + 1, figsize=(2.2 * (len(steps) + 1), 4.2 * n), squeeze=False)
    for i in range(n):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(np.clip(images[i], 0, 1))
        top[0].set_title(names[i] if names is not None else f"image {i}", fontsize=8)
        bottom[0].axis("off")
        for j, step in enumerate(steps):
            lo, hi = np.percentile(_interior(m[i, step]), [1, 99])
            im = top[j + 1].imshow(m[i, step], cmap="viridis", vmin=lo, vmax=hi)
            top[j + 1].set_title(f"m, t={step / T:.2f}", fontsize=8)
            fig.colorbar(im, ax=top[j + 1], fraction=0.046)
            lim = np.percentile(np.abs(_interior(scores[i, j])), 99) or 1.0
            im = bottom[j + 1].imshow(scores[i, j], cmap="RdBu_r", vmin=-lim, vmax=lim)
            bottom[j + 1].set_title(f"pixel score ({component}), t={step / T:.2f}", fontsize=8)
            fig.colorbar(im, ax=bottom[j + 1], fraction=0.046)
        for ax in (*top, *bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_convergence(outer_iterations, residual, names=None):
    """Outer iterations and relative nonlinear residual per step, one line per image.

    Args:
      outer_iterations, residual: ``(N, T)``.
    """
    outer_iterations, residual = np.asarray(outer_iterations), np.asarray(residual)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = np.arange(1, outer_iterations.shape[-1] + 1)
    for i in range(outer_iterations.shape[0]):
        label = names[i] if names is not None else None
        a.plot(steps, outer_iterations[i], lw=1, label=label)
        b.semilogy(steps, residual[i], lw=1)
    a.set_xlabel("time step n")
    a.set_ylabel("outer iterations")
    b.set_xlabel("time step n")
    b.set_ylabel("||F(m^n)|| / ||m^(n-1)/dt||")
    if names is not None and len(names) <= 8:
        a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def show_image(ax, image, title=None):
    """Draw an ``(H, W, C)`` image in ``[0, 1]`` on ``ax`` without ticks."""
    image = np.clip(np.asarray(image), 0.0, 1.0)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def plot_denoising(noisy, denoised, clean, generated=None, scores=None):
    """Rows noisy / denoised / clean (``(N, H, W, C)`` each), and a row of generated samples.

    ``scores``: optional per-image denoised SSIM, written over the denoised row.
    """
    count = len(clean)
    extra = 0 if generated is None else len(generated)
    cols = max(count, extra, 1)
    rows = 3 + (1 if extra else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols + 0.8, 1.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    labels = ("noisy", "denoised", "clean", "generated")
    for i in range(count):
        show_image(axes[0, i], noisy[i])
        show_image(axes[1, i], denoised[i], None if scores is None else f"SSIM {float(scores[i]):.3f}")
        show_image(axes[2, i], clean[i])
    for j in range(extra):
        show_image(axes[3, j], generated[j])
    for r in range(rows):
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(labels[r], fontsize=8)
    fig.tight_layout()
    return fig


def plot_ssim_vs_time(log, target=None, precompute_seconds=0.0, title=None):
    """Denoising SSIM at each evaluation against wall time (pre-compute + training), one colour per image."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    images = sorted({r["image"] for r in log})
    cmap = plt.get_cmap("viridis", max(len(images), 2))
    for k, image in enumerate(images):
        records = [r for r in log if r["image"] == image]
        ax.plot([r["wall_seconds"] for r in records], [r["ssim"] for r in records], ".-", color=cmap(k), lw=1, ms=3)
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target SSIM {target}")
    if precompute_seconds:
        ax.axvspan(0, precompute_seconds, color="0.85", label=f"score pre-computation ({precompute_seconds:.1f} s)")
    ax.set_xlabel("wall time (s): pre-computation + training")
    ax.set_ylabel("denoising SSIM")
    ax.set_ylim(min(0.0, min((r["ssim"] for r in log), default=0.0)), 1.0)
    if target is not None or precompute_seconds:  # the legend's only entries
        ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or f"image-by-image training ({len(images)} images, one colour each)", fontsize=9)
    fig.tight_layout()
    return fig
