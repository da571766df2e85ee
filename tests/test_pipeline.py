import dataclasses

import numpy as np
import pytest

from fpjax import pipeline
from fpjax.batch.store import StoreDamagedError
from fpjax.data import sample_images
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
