import dataclasses
import json

import pytest

from fpjax.data import cifar_subset
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
    assert floor["alpha"] == 10.0 and floor["limit"] > 0
    assert {r["mask"] for r in result["masks"]} == {"paper", "released"}
    assert len(result["mixture"]) == 2 * 1 * 2  # two samplers, one step count, plain and one alpha
    assert "## 2. The paper's form is biased" in (tmp_path / "report.md").read_text()


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
