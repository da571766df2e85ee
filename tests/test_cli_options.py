"""Every string option the command line derives from a configuration has its choices, and they are exactly
the values the configuration accepts (so a renamed choice, or a field that loses its Literal annotation, fails)."""

import dataclasses

import pytest

import fpjax
from fpjax import cli, pipeline
from fpjax.diffusion.sampling import SamplerConfig
from fpjax.learn.models.unet import UNetConfig
from fpjax.learn.trainer import TrainConfig

CONFIGS = [fpjax.FPConfig, TrainConfig, UNetConfig, SamplerConfig, pipeline.RunConfig]


def _string_options(cls):
    return [o for o in cli.dataclass_options(cls) if o.kind is str and len(o.path) == 1]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_string_options_have_choices_that_the_config_accepts_and_nothing_else(cls):
    for option in _string_options(cls):
        assert option.choices, f"{cls.__name__}.{option.path[0]} lost its choices (annotate it with Literal[...])"
        for choice in option.choices:
            try:
                cls(**{option.path[0]: choice})
            except ValueError as error:  # a choice valid only with another setting says which
                assert option.path[0] not in str(error).split(" must ")[0] or "with" in str(error), error
        with pytest.raises(ValueError):
            cls(**{option.path[0]: "no-such-choice"})


def test_the_parser_refuses_a_value_outside_the_choices():
    for flag in ("--scheme", "--boundary", "--solver", "--preconditioner", "--parametrization"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["run", flag, "no-such-choice"])


def test_every_fpconfig_string_field_is_an_option():
    names = {o.path[0] for o in _string_options(fpjax.FPConfig)}
    fields = {f.name for f in dataclasses.fields(fpjax.FPConfig) if isinstance(f.default, str)}
    assert names == fields
