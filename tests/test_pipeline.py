import dataclasses

from fpjax import pipeline
from fpjax.learn.trainer import TrainConfig


def test_the_main_job_departs_from_the_library_only_where_the_table_says():
    main_job, library = pipeline.main_job_train_config(), TrainConfig()
    differing = {
        f.name for f in dataclasses.fields(TrainConfig) if getattr(main_job, f.name) != getattr(library, f.name)
    }
    assert differing == set(pipeline.TRAIN_OVERRIDES)  # an override the library caught up with is dead: remove it
    for name, (value, why) in pipeline.TRAIN_OVERRIDES.items():
        assert getattr(main_job, name) == value and len(why) > 40
