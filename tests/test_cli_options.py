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
    assert names == fields | {"scheme"}  # --scheme chooses the scheme object by its name


SCHEME_CLASSES = (fpjax.LogDensity, fpjax.Density, fpjax.Spectral)


def _scheme_options():
    return [o for o in cli.dataclass_options(fpjax.FPConfig) if len(o.path) == 2 and o.path[0] == "scheme"]


def test_every_option_of_every_scheme_is_an_option_naming_the_schemes_that_have_it():
    options = {o.path[1]: o for o in _scheme_options()}
    for cls in SCHEME_CLASSES:
        for field in dataclasses.fields(cls):
            option = options[field.name]
            having = tuple(c.name for c in SCHEME_CLASSES if field.name in {f.name for f in dataclasses.fields(c)})
            assert option.variants == having, field.name
            if isinstance(field.default, str):  # its choices are exactly what the scheme accepts
                assert option.choices, f"{cls.__name__}.{field.name} lost its choices (annotate it with Literal)"
                for choice in option.choices:
                    cls(**{field.name: choice})
                with pytest.raises(ValueError, match=f"{cls.__name__}.{field.name} must be one of"):
                    cls(**{field.name: "no-such-choice"})
    assert set(options) == {f.name for cls in SCHEME_CLASSES for f in dataclasses.fields(cls)}


def _fp_config(argv):
    return cli.dataclass_from_args(fpjax.FPConfig, cli.build_parser().parse_args(["precompute", *argv]))


def test_scheme_options_build_the_chosen_scheme():
    assert _fp_config([]) == fpjax.FPConfig()
    assert _fp_config(["--linearization", "newton"]).scheme == fpjax.LogDensity(linearization="newton")
    assert _fp_config(["--scheme", "density", "--tol", "1e-3", "--maxiter", "7"]).scheme == fpjax.Density(
        tol=1e-3, maxiter=7
    )
    assert _fp_config(["--scheme", "spectral", "--transform", "fft"]).scheme == fpjax.Spectral(transform="fft")


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--scheme", "density", "--linearization", "newton"], "--linearization applies to --scheme log_density"),
        (["--scheme", "spectral", "--tol", "1e-3"], "--tol applies to --scheme log_density or density"),
        (["--scheme", "spectral", "--max-outer", "3"], "--max-outer applies to --scheme log_density, not spectral"),
    ],
)
def test_an_option_the_chosen_scheme_lacks_is_refused(argv, named):
    with pytest.raises(cli.ConfigError, match=named):
        _fp_config(argv)


def test_help_names_the_schemes_an_option_applies_to():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["precompute"].format_help().split())
    assert "[--scheme log_density] (default: picard)" in text
    assert "[--scheme log_density | density] (default: 1e-06; > 0)" in text
    assert "[--scheme log_density | density | spectral] (default: auto)" in text


def _parsers(parser, path=("fpjax",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action.choices, dict):  # a subcommand's parsers
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_of_every_command_has_its_own_help_text():
    for path, parser in _parsers(cli.build_parser()):
        texts = {}
        for action in parser._actions:
            if not action.option_strings or action.help == "==SUPPRESS==":
                continue
            assert action.help, f"{' '.join(path)} {action.option_strings[0]} has no help text"
            texts.setdefault(action.help.split(" (default")[0], []).append(action.option_strings[0])
        shared = {text: flags for text, flags in texts.items() if len(flags) > 1}
        assert not shared, f"{' '.join(path)}: options share one help text: {shared}"


def test_version():
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0


def test_an_option_checked_positive_at_parse_time_is_one_the_library_refuses_at_zero():
    """The parse-time checks repeat the library's, never contradict them (--g 0 was refused, FPConfig takes it)."""
    checked = 0
    for cls in CONFIGS:
        for option in cli.dataclass_options(cls):
            if option.dest not in cli.POSITIVE_OPTIONS or option.sequence:
                continue
            owner = cls
            if option.variants:  # a scheme's option: its scheme class
                owner = next(c for c in SCHEME_CLASSES if c.name == option.variants[0])
            elif len(option.path) == 2:  # a nested config (TrainConfig.sampler)
                owner = type(getattr(cls(), option.path[0]))
            with pytest.raises((ValueError, TypeError)):
                owner(**{option.path[-1]: 0})
            checked += 1
    assert checked >= 8
