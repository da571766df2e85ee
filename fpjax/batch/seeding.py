"""Seeds of the cross-matrix projection: which images are solved alone to span the others' Krylov bases.

The cross-matrix paper solves one image of every ``cycle`` in full and
projects the following ones onto Krylov bases of its solution; its proposed
remedy for diverse datasets is to choose the seeds by similarity instead.
:func:`seed_groups` implements both: fixed cycles, or k-means clusters of
8x8 thumbnails with the image nearest each centre as the seed.
"""

from __future__ import annotations

import numpy as np

SEED_RULES = ("cycle", "cluster")


def thumbnails(images, side: int = 8):
    """``(N, H, W, C)`` -> ``(N, side * side * C)`` block means: a cheap description for clustering."""
    n, h, w, c = images.shape
    rows = np.linspace(0, h, side + 1).astype(int)
    cols = np.linspace(0, w, side + 1).astype(int)
    return np.stack(
        [
            images[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].mean(axis=(1, 2))
            for i in range(side)
            for j in range(side)
        ],
        axis=1,
    ).reshape(n, -1)


def kmeans(points, k: int, iterations: int = 25, seed: int = 0):
    """Plain Lloyd k-means with k-means++ initialisation; returns ``(labels, centres)``.

    Args:
      points: ``(N, D)``.
      k: number of clusters.
    Returns:
      ``(N,)`` int labels and ``(k, D)`` centres.
    """
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min(((points[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(points[rng.choice(len(points), p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(len(points))])
    centres = np.asarray(centres)
    for _ in range(iterations):
        labels = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        new = np.asarray([points[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return labels, centres


def seed_groups(images, projection: str, cycle: int, seeds: str = "cycle"):
    """Index arrays, one per group; with a projection, each group's first index is its seed.

    Args:
      images: ``(N, H, W, C)``, an array or an image set.
      projection: ``"off"`` gives one group of all images (no seeds).
      cycle: images per group (``"cycle"``), or ``ceil(N / cycle)`` clusters (``"cluster"``).
      seeds: one of :data:`SEED_RULES`.
    """
    n = len(images)
    if projection == "off":
        return [np.arange(n)]
    if seeds == "cycle":
        return [np.arange(s, min(s + cycle, n)) for s in range(0, n, cycle)]
    if seeds != "cluster":
        raise ValueError(f"seeds must be one of {SEED_RULES}, got {seeds!r}")
    # a few hundred images at a time: an image set (fpjax.data.sets) is read, never held whole
    points = np.concatenate([thumbnails(np.asarray(images[s : s + 256])) for s in range(0, n, 256)])
    labels, centres = kmeans(points, max(1, -(-n // cycle)))
    groups = []
    for j in range(len(centres)):
        members = np.flatnonzero(labels == j)
        if len(members):
            seed = members[np.argmin(((points[members] - centres[j]) ** 2).sum(-1))]
            groups.append(np.concatenate([[seed], members[members != seed]]))
    return groups
