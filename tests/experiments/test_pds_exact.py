import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fpjax.data import cifar_subset
from fpjax.diffusion import exact, pds
from fpjax.diffusion.sde import VESDE
from fpjax.experiments import pds_exact

TINY = dataclasses.replace(
    pds_exact.QUICK_EXACT, images=8, counts=(3, 6), alphas=(10.0,), best_alpha_steps=(6,), mask_steps=(6,),
    mixture_steps=(3,), mixture_samples=2,
    only=("reverse SDE (Euler-Maruyama)", "reverse SDE, marginal-preserving PDS",
          "released PDS sampler (RD + Langevin)"),
)  # fmt: skip


def test_tiny_run_writes_report_json_and_figure(tmp_path):
    if cifar_subset() is None:
        pytest.skip("the CIFAR-10 subset is absent")
    result = pds_exact.run_experiment(tmp_path, TINY)
    for name in ("report.md", "pds_exact.json", "pds_exact_kl_vs_steps.png"):
        assert (tmp_path / name).exists()
    stored = json.loads((tmp_path / "pds_exact.json").read_text())
    assert set(stored["curves"]) == set(TINY.only)
    assert stored["curves"]["reverse SDE (Euler-Maruyama)"].keys() == {"plain", "a=10"}
    assert all(len(v) == 2 for rows in stored["curves"].values() for v in rows.values())
    floor = result["floors"][0]
    assert floor["alpha"] == 10.0
    # The floor is the closed form: each mode's variance S q / (2q - 1) (q = 1 / R_f^2) against S, a KL of
    # 1/2 sum_k (r_k - 1 - log r_k) with r_k = q_k / (2 q_k - 1) over the full DFT grid and channels.
    images, _ = pds_exact.load_trucks(TINY)
    assert floor["limit"] == pytest.approx(_floor_kl(images, 10.0), rel=1e-6)
    assert {r["mask"] for r in result["masks"]} == {"paper", "released"}
    assert len(result["mixture"]) == 2 * 1 * 2  # two samplers, one step count, plain and one alpha


def _floor_kl(images, alpha):
    """The paper form's limiting KL, written out with NumPy from the preconditioner's frequency multipliers."""
    r_f = np.asarray(pds.from_data(images, alpha, pixel=False).r_f, np.float64)
    q = np.broadcast_to(1.0 / r_f**2, images.shape[1:])
    r = q / (2.0 * q - 1.0)
    return 0.5 * float(np.sum(r - 1.0 - np.log(r)))


def test_the_tables_paper_form_reaches_its_closed_form_floor_and_the_marginal_form_the_data():
    """The experiment's Euler-Maruyama row is the PDS paper's form (named in the experiment, so its figures do not
    follow the library's default): at 1000 steps its exact KL sits on the closed-form floor; the
    marginal-preserving row's KL there is near 0."""
    if cifar_subset() is None:
        pytest.skip("the CIFAR-10 subset is absent")
    images, _ = pds_exact.load_trucks(TINY)
    limit = _floor_kl(images, 10.0)
    assert limit > 1.0
    configs = pds_exact.samplers(TINY)
    sde = VESDE(TINY.sigma_min, TINY.sigma_max)
    m = pds.from_data(images, 10.0, pixel=False)
    with jax.enable_x64(True):
        model = exact.fit_gaussian(jnp.asarray(images))
        names = ("reverse SDE (Euler-Maruyama)", "reverse SDE, marginal-preserving PDS")
        em, marginal = (pds_exact.kl_curve(model, sde, configs[name][0], m, (1000,))[0] for name in names)
    assert em == pytest.approx(limit, rel=0.03)
    assert marginal < 0.01 * limit


def test_missing_data_skips_cleanly(tmp_path):
    settings = dataclasses.replace(TINY, cifar=str(tmp_path / "absent.npz"))
    result = pds_exact.run_experiment(tmp_path, settings)
    assert "skipped" in result and "Skipped" in (tmp_path / "report.md").read_text()


def test_steps_to_levels_takes_the_fewest_steps_and_the_best_alpha():
    settings = dataclasses.replace(TINY, counts=(1, 2, 3), thresholds=(10.0, 1.0))
    curves = {name: {"plain": [50.0, 5.0, 0.5]} for name in pds_exact.samplers(settings)}
    curves["DDIM"]["a=2"] = [8.0, 0.9, 0.1]  # only to exercise the PDS column
    curves["DDIM"]["a=3"] = [20.0, 2.0, 0.2]
    table = pds_exact.steps_to_levels(curves, settings)
    assert table["DDIM"]["10"] == dict(plain=2, plain_evals=2, pds=1, pds_alpha="a=2", pds_evals=1)
    assert table["PF-ODE Heun (EDM, rho=7)"]["1"]["plain_evals"] == 2 * 3 - 1
