import numpy as np
import pytest

from fpjax.experiments import pds as experiments


def _rows(table):
    """``{(steps, alpha): ssim}`` -> experiment rows for one method."""
    return [dict(method="m", steps=s, alpha=a, pds=a is not None, denoise_ssim=q) for (s, a), q in table.items()]


def test_pds_summary_counts_steps_to_the_common_level_and_fits_eq_50():
    # Best alpha 2 at T=10 and 4 at T=40; plain reaches 0.95 only at T=80, PDS (alpha 2) already at T=10.
    table = {(10, None): 0.5, (10, 2.0): 0.95, (10, 4.0): 0.9,
             (40, None): 0.8, (40, 2.0): 0.7, (40, 4.0): 1.0,
             (80, None): 1.0, (80, 2.0): 0.1, (80, 4.0): 0.2}  # fmt: skip
    s = experiments.pds_summary(_rows(table), "m")
    assert s["level"] == pytest.approx(0.95)
    assert s["plain_steps"] == 80 and s["pds_steps"] == 10 and s["speedup"] == pytest.approx(8.0)
    assert {k: b["alpha"] for k, b in s["best"].items()} == {10: 2.0, 40: 4.0, 80: None}
    # Two points determine the line: y(10) = 1.25, y(40) = 0.5625.
    a = (1.25 - 0.5625) / (1 / 10 - 1 / 40)
    np.testing.assert_allclose([s["fit"]["a"], s["fit"]["b"]], [a, 1.25 - a / 10], rtol=1e-10)


def test_pds_summary_without_finite_best_alphas_has_no_fit_or_speedup():
    table = {(10, None): 0.9, (10, 2.0): 0.1, (20, None): 1.0, (20, 2.0): 0.2}
    s = experiments.pds_summary(_rows(table), "m")
    assert s["fit"] is None and s["pds_steps"] is None and s["speedup"] is None and s["plain_steps"] == 20
