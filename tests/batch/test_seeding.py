import numpy as np
import pytest

from fpjax.batch.seeding import SEED_RULES, kmeans, seed_groups, thumbnails


def test_thumbnails_are_block_means():
    images = np.arange(2 * 16 * 16 * 3, dtype=float).reshape(2, 16, 16, 3)
    thumbs = thumbnails(images, side=8).reshape(2, 8, 8, 3)
    np.testing.assert_allclose(thumbs[1, 2, 5], images[1, 4:6, 10:12].mean(axis=(0, 1)))


def test_kmeans_separates_two_blobs():
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))])
    labels, centres = kmeans(points, 2)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[-1]
    np.testing.assert_allclose(np.sort(centres[:, 0]), [0, 5], atol=0.1)


def test_cycle_groups_and_bad_rules():
    images = np.zeros((7, 8, 8, 1))
    assert [g.tolist() for g in seed_groups(images, "initial_guess", 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [g.tolist() for g in seed_groups(images, "off", 3)] == [list(range(7))]
    assert SEED_RULES == ("cycle", "cluster")
    with pytest.raises(ValueError, match="seeds must be one of"):
        seed_groups(images, "initial_guess", 3, seeds="random")
