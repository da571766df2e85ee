import dataclasses
import json

import numpy as np
import pytest

from fpjax import pipeline
from fpjax.batch.store import StoreDamagedError
from fpjax.data import sample_images
from fpjax.diffusion.sampling import SamplerConfig
from fpjax.learn.models import UNetConfig
from fpjax.learn.trainer import TrainConfig
from fpjax.solver.problem import FPConfig


def test_the_main_job_departs_from_the_library_only_where_the_table_says():
    main_job, library = pipeline.main_job_train_config(), TrainConfig()
    differing = {
        f.name for f in dataclasses.fields(TrainConfig) if getattr(main_job, f.name) != getattr(library, f.name)
    }
    assert differing == set(pipeline.TRAIN_OVERRIDES)  # an override the library caught up with is dead: remove it
    for name, (value, why) in pipeline.TRAIN_OVERRIDES.items():
        assert getattr(main_job, name) == value and len(why) > 40


def test_no_nan_reaches_training_from_the_store(tmp_path):
    m = np.zeros((3, 2, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(pipeline.finite_solutions(m, ["a", "b", "c"], "s.zarr"), m)
    m[1, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 image\(s\) in s.zarr are not finite: \['b'\]"):
        pipeline.finite_solutions(m, ["a", "b", "c"], "s.zarr")


def test_a_damaged_store_is_refused_then_repaired_on_request(tmp_path):
    images, names, config = sample_images(32)[:2, :16, :16], ["a", "b"], FPConfig(T=4)
    first, _, _ = pipeline._precompute_stage(images, names, config, tmp_path, progress=False)
    chunk = next(p for p in (tmp_path / "fp_store.zarr" / "m" / "c" / "1").rglob("*") if p.is_file())
    chunk.unlink()  # read back, this image's m would be the fill value NaN
    refused = r"(?s)1 finished image\(s\) fail verification, \['b'\].*--repair-store"
    with pytest.raises(StoreDamagedError, match=refused):
        pipeline._precompute_stage(images, names, config, tmp_path, progress=False)
    with pytest.warns(RuntimeWarning, match=r"1 finished image\(s\) .* recomputed: \['b'\]"):
        again, _, _ = pipeline._precompute_stage(images, names, config, tmp_path, progress=False, repair=True)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))


def test_training_on_the_fly_needs_no_store_and_matches_training_from_the_store(tmp_path):
    """The same mixed run from the store (read batch by batch) and on the fly (each batch solved inside the step):
    the same draws, so the same losses to float32 rounding; on the fly writes no store. Settings of
    tests/learn/test_sources.py (their compiled programs are shared)."""
    images = sample_images(32)[:2, :16, :16]
    fp = FPConfig(T=10, scheme="spectral")
    unet = UNetConfig(channels=8, channel_mult=(1, 2), attention_resolutions=(8,), groups=4)
    train = TrainConfig(batch_size=4, steps_per_call=5, max_steps=10, target_ssim=None,
                        sampler=SamplerConfig(steps=8, method="ode"))  # fmt: skip
    reports, logs = {}, {}
    for source in ("store", "on_the_fly"):
        run = pipeline.RunConfig(generate=0, per_image_labels=False, train_from=source, report_images=1, mode="mixed")
        out = tmp_path / source
        reports[source] = pipeline.run(images, out, fp_config=fp, unet_config=unet, train_config=train,
                                       run_config=run, progress=False)  # fmt: skip
        logs[source] = [r["loss"] for r in json.loads((out / "training_log.json").read_text())["log"]]
        assert (out / "fp_store.zarr").exists() == (source == "store")
    np.testing.assert_allclose(logs["store"], logs["on_the_fly"], rtol=1e-4)
    assert len(logs["store"]) == 2  # mixed: one run over both images, two evaluations
    report = reports["on_the_fly"]
    (row,) = report["per_image"]
    assert row["name"] == "all 2 images (mixed)" and row["steps"] == 10 and report["images"] == 2
    assert row["fp_max_residual"] is None and report["precompute_seconds"] == 0.0
    assert report["report_images"] == 1 and row["final_model_ssim"] == report["median_final_model_ssim"]


def test_on_the_fly_training_of_the_papers_scheme_is_refused_before_any_work(tmp_path):
    run = pipeline.RunConfig(train_from="on_the_fly")
    with pytest.raises(ValueError, match="needs a linear scheme"):
        pipeline.run(sample_images(32)[:1], tmp_path, fp_config=FPConfig(T=4), run_config=run, progress=False)
    assert not (tmp_path / "fp_store.zarr").exists()
