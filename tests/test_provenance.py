import json

import jax
import numpy as np
import pytest

import fpjax
from fpjax.diffusion.sampling import SamplerConfig
from fpjax.learn.trainer import TrainConfig
from fpjax.provenance import jsonable, machine


def test_machine_names_the_platform_and_jax():
    info = machine()
    assert set(info) == {"platform", "processor", "cpu_count", "jax", "backend", "devices"}
    assert info["jax"] == jax.__version__ and info["backend"] == jax.default_backend()
    assert json.loads(json.dumps(info)) == info


def drift(t):
    return (0.1 * t, 0.0)


def test_jsonable_is_json_with_functions_as_their_repr():
    config = fpjax.FPConfig(T=4, g=tuple(np.linspace(0.3, 0.7, 5)), drift=drift, spacing=(0.5, 0.5))
    out = jsonable(config)
    assert out == json.loads(json.dumps(out))
    assert out["drift"] == repr(drift) and out["g"] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    assert out["spacing"] == [0.5, 0.5] and out["T"] == 4 and list(out) == [f for f in vars(config) if f in out]
    assert jsonable(fpjax.FPConfig(g=np.float32(0.25)))["g"] == 0.25


def test_nested_configs_keep_their_type():
    out = jsonable(TrainConfig(sampler=SamplerConfig(steps=7)))
    assert out["sampler"]["type"] == "SamplerConfig" and out["sampler"]["steps"] == 7
    assert out["objective"]["type"] == type(TrainConfig().objective).__name__
    json.dumps(out)
    with pytest.raises(TypeError, match="dataclass instance"):
        jsonable(TrainConfig)
