"""Figures a person would rather look at than read: log-densities and scores over time."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fpjax.fokker_planck import pixel_score  # noqa: E402


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
    scores = np.asarray(pixel_score(m[:, steps], component, boundary))
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
