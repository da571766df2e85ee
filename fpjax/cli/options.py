"""Command-line options derived from the library's configuration dataclasses and keyword arguments: names,
types, choices (``Literal`` annotations), defaults and help come from the fields and their docstrings, so they
cannot drift from the library; values are checked where they are parsed."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing

import numpy as np

# ----------------------------------------------------------------------------------------------
# Option values checked where they are parsed: the message names the option


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer > 0 (``--n``, ``--T``, ``--batch-size``, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    """An ``argparse`` type: a finite number (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type: a finite number > 0 (``--g``, ``--tol``, ``--learning-rate``, ...)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


POSITIVE_OPTIONS = frozenset(
    {
        # FPConfig and fpjax.precompute
        "T", "max_outer", "tol", "maxiter", "dim", "cycle", "batch_size",
        # TrainConfig, its sampler, UNetConfig
        "learning_rate", "grad_clip", "steps_per_call", "max_steps", "max_seconds", "max_total_seconds",
        "checkpoint_every", "noise_level", "sampler_steps", "channels", "channel_mult", "num_res_blocks",
        "attention_resolutions", "num_heads", "groups",
    }
)  # fmt: skip
"""Generated options (by ``dest``) whose values must be > 0 (each one the library refuses at 0 too: ``g = 0``
and ``outer_tol = 0`` mean something there, so they are not here); every generated float must be finite."""


# ----------------------------------------------------------------------------------------------
# Options generated from dataclasses and signatures

_SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option generated from a dataclass field or a keyword argument.

    Attributes:
      path: field names from the top dataclass down (``("sampler", "steps")``), or ``(keyword,)``.
      flag: the option string (``--sampler-steps``); ``dest`` the namespace attribute (``sampler_steps``).
      kind: ``bool``, ``int``, ``float`` or ``str``; ``sequence``: a ``tuple[kind, ...]`` field.
      default: the library's default, or the value of an override.
      optional: ``none`` on the command line means ``None``.
      choices: the values of the field's ``Literal[...]`` annotation, or ``None``.
      help: the field's docstring entry (``Attributes:`` or ``Args:``), and an override's reason.
      variants: for a field of a variant (a scheme's option): the names of the variants that have it. The
        option then has no default of its own (``argparse.SUPPRESS``): it is the chosen variant's.
    """

    path: tuple
    flag: str
    dest: str
    kind: type
    default: object
    optional: bool = False
    sequence: bool = False
    choices: tuple | None = None
    help: str = ""
    variants: tuple = ()


class ConfigError(ValueError):
    """Options that a configuration dataclass refuses (``main`` reports it as a usage error)."""


def dataclass_options(cls, *, defaults=None, overrides=None, prefix: str = "") -> list[Option]:
    """The options of ``cls``'s fields of a command-line type (scalars, optional scalars, tuples of scalars).

    A field holding a dataclass (``TrainConfig.sampler``) gives its own fields, prefixed with its name
    (``--sampler-steps``); other fields (functions, ``Any``) are left to their defaults.

    Args:
      cls: a dataclass type.
      defaults: an instance of ``cls`` whose values are the defaults (default: the fields' defaults).
      overrides: ``{field: (value, why)}``: a command's deliberate departures from the library's defaults.
      prefix: prepended to the option names (``"sampler-"``).
    """
    overrides = overrides or {}
    docs = _documented(cls, "Attributes")
    hints = _type_hints(cls)
    options = []
    for field in dataclasses.fields(cls):
        default = getattr(defaults, field.name) if defaults is not None else _field_default(field)
        variants = _variants(hints.get(field.name))
        if variants:
            options += variant_options(field.name, variants, default, docs.get(field.name, ""), prefix)
            continue
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            nested = dataclass_options(type(default), defaults=default, prefix=f"{prefix}{field.name}-")
            options += [dataclasses.replace(o, path=(field.name,) + o.path) for o in nested]
            continue
        help_text = docs.get(field.name, "")
        if field.name in overrides:
            value, why = overrides[field.name]
            help_text += f" Here {value!r}, not the library's {default!r}: {why}."
            default = value
        option = _option(field.name, hints.get(field.name), default, help_text, prefix)
        if option is not None:
            options.append(option)
    return options


def variant_options(name: str, variants, default, help_text: str, prefix: str = "") -> list[Option]:
    """The options of a field that holds one of several dataclasses (``FPConfig.scheme``: a
    :class:`~fpjax.solver.problem.LogDensity`, ``Density`` or ``Spectral``), each naming itself in a class
    attribute ``name``: ``--scheme`` chooses the class by its name, and every field of every class is an option
    (``--linearization``), its help naming the classes that have it. Given for a class that lacks it, the
    option is refused (:func:`dataclass_from_args`)."""
    names = tuple(v.name for v in variants)
    chosen = Option((name,), f"--{prefix}{name}".replace("_", "-"), f"{prefix}{name}".replace("-", "_"), str,
                    default.name, choices=names, help=help_text)  # fmt: skip
    options, seen = [chosen], {}
    for variant in variants:
        hints = _type_hints(variant)
        for field in dataclasses.fields(variant):
            if field.name in seen:
                seen[field.name] = dataclasses.replace(
                    seen[field.name], variants=seen[field.name].variants + (variant.name,)
                )
                continue
            docs = _documented(_defining_class(variant, field.name), "Attributes")
            option = _option(field.name, hints.get(field.name), _field_default(field), docs.get(field.name, ""),
                             prefix)  # fmt: skip
            if option is not None:
                seen[field.name] = dataclasses.replace(option, path=(name, field.name), variants=(variant.name,))
    return options + list(seen.values())


def _variants(hint) -> tuple:
    """The classes of a union of dataclasses that name themselves (``LogDensity | Density | Spectral``), or ``()``."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    members = typing.get_args(hint) if union else ()
    if members and all(isinstance(m, type) and dataclasses.is_dataclass(m) and hasattr(m, "name") for m in members):
        return members
    return ()


def _defining_class(cls, field_name: str) -> type:
    """The class in ``cls``'s MRO whose own annotations declare ``field_name`` (its docstring documents it)."""
    return next(c for c in cls.__mro__ if field_name in c.__dict__.get("__annotations__", {}))


def function_options(function, names, choices=None) -> list[Option]:
    """The options of ``function``'s keyword arguments ``names``, defaults and help from its signature and ``Args:``.

    ``choices``: ``{name: tuple}`` for the arguments whose values a module-level tuple lists.
    """
    docs, hints = _documented(function, "Args"), _type_hints(function)
    parameters = inspect.signature(function).parameters
    options = [_option(name, hints.get(name), parameters[name].default, docs.get(name, "")) for name in names]
    return [dataclasses.replace(o, choices=(choices or {}).get(o.dest)) for o in options if o is not None]


def add_options(parser: argparse.ArgumentParser, options, title: str | None = None) -> list[Option]:
    """Add ``options`` to ``parser`` (in an argument group ``title``); returns them."""
    group = parser.add_argument_group(title) if title else parser
    for o in options:
        none = "; none: None" if o.optional and o.kind is not bool else ""
        positive = "; > 0" if o.dest in POSITIVE_OPTIONS else ""
        default = "%(default)s" if not o.variants else str(o.default).replace("%", "%%")
        applies = f" [--{o.path[0]} {' | '.join(o.variants)}]" if o.variants else ""
        text = o.help.replace("%", "%%") + f"{applies} (default: {default}{none}{positive})"
        value = argparse.SUPPRESS if o.variants else o.default  # a variant's option: absent unless given
        if o.kind is bool:  # --flag / --no-flag
            group.add_argument(o.flag, dest=o.dest, default=value, action=argparse.BooleanOptionalAction, help=text)
            continue
        kind = _none_or(_value_type(o)) if o.optional else _value_type(o)
        nargs = "*" if o.sequence else None
        group.add_argument(o.flag, dest=o.dest, type=kind, nargs=nargs, default=value, choices=o.choices, help=text)
    return options


def _value_type(option: Option):
    """The ``argparse`` type of ``option``: positive where :data:`POSITIVE_OPTIONS` says, floats finite."""
    positive = option.dest in POSITIVE_OPTIONS
    if option.kind is float:
        return positive_float if positive else finite_float
    if option.kind is int and positive:
        return positive_int
    return option.kind


def add_dataclass_options(parser, cls, *, defaults=None, overrides=None, prefix: str = "") -> list[Option]:
    """Add the options of ``cls``'s fields (:func:`dataclass_options`) to ``parser``, in a group named after it."""
    options = dataclass_options(cls, defaults=defaults, overrides=overrides, prefix=prefix)
    return add_options(parser, options, f"{cls.__name__} ({cls.__module__})")


def dataclass_from_args(cls, args: argparse.Namespace, *, defaults=None, prefix: str = ""):
    """An instance of ``cls`` from the parsed options that :func:`add_dataclass_options` added.

    Fields without an option keep ``defaults``' value (or the field's default).

    Raises:
      ConfigError: ``cls`` refused the values (its message says which and why).
    """
    values, hints = {}, _type_hints(cls)
    for field in dataclasses.fields(cls):
        default = getattr(defaults, field.name) if defaults is not None else _field_default(field)
        dest = f"{prefix}{field.name}".replace("-", "_")
        variants = _variants(hints.get(field.name))
        if variants and hasattr(args, dest):
            values[field.name] = _variant_from_args(field.name, variants, default, args, prefix)
        elif dataclasses.is_dataclass(default) and not isinstance(default, type):
            values[field.name] = dataclass_from_args(type(default), args, defaults=default, prefix=f"{dest}_")
        elif hasattr(args, dest):
            value = getattr(args, dest)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        return dataclasses.replace(defaults, **values) if defaults is not None else cls(**values)
    except (TypeError, ValueError) as error:
        raise _refused(cls, error, prefix) from error


def _variant_from_args(name: str, variants, default, args: argparse.Namespace, prefix: str = ""):
    """The variant ``--{name}`` chose, with the options given for it (:func:`variant_options`).

    Raises:
      ConfigError: an option was given that the chosen variant does not have.
    """
    chosen = getattr(args, f"{prefix}{name}".replace("-", "_"))
    cls = next(v for v in variants if v.name == chosen)
    own = {f.name for f in dataclasses.fields(cls)}
    given = {}
    for variant in variants:
        for field in dataclasses.fields(variant):
            dest = f"{prefix}{field.name}".replace("-", "_")
            if not hasattr(args, dest) or field.name in given:
                continue
            if field.name not in own:
                having = [v.name for v in variants if field.name in {f.name for f in dataclasses.fields(v)}]
                raise ConfigError(
                    f"--{dest.replace('_', '-')} applies to --{name} {' or '.join(having)}, not {chosen}: "
                    f"drop it, or choose --{name} {having[0]}"
                )
            value = getattr(args, dest)
            given[field.name] = tuple(value) if isinstance(value, list) else value
    base = default if type(default) is cls else cls()
    try:
        return dataclasses.replace(base, **given)
    except (TypeError, ValueError) as error:
        raise _refused(cls, error, prefix) from error


def _refused(cls, error: Exception, prefix: str = "") -> ConfigError:
    """``error`` of ``cls`` as a :class:`ConfigError` that starts with the option it is about (``--g: FPConfig.g
    must be >= 0 ...``), found by the ``Class.field`` the message names."""
    message = str(error)
    fields = [f.name for f in dataclasses.fields(cls)]
    named = [name for name in fields if re.search(rf"\b{cls.__name__}\.{name}\b", message)]
    flag = f"--{prefix}{named[0]}".replace("_", "-") + ": " if named else ""
    return ConfigError(f"{flag}{message}" if named else f"{cls.__name__}: {message}")


def kwargs_from_args(options, args: argparse.Namespace) -> dict:
    """``{keyword: value}`` of :func:`function_options`' options in the parsed ``args``."""
    return {o.path[0]: getattr(args, o.dest) for o in options}


def _option(name: str, hint, default, help_text: str, prefix: str = "") -> Option | None:
    """An :class:`Option` for a value of type ``hint``, or ``None`` where the type has no command-line form."""
    members = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    optional = type(None) in members
    flag = f"--{prefix}{name}".replace("_", "-")
    dest = flag[2:].replace("-", "_")
    for member in members:
        if typing.get_origin(member) is typing.Literal:  # the choices, written once in the field's annotation
            choices = typing.get_args(member)
            kind = type(choices[0])
            return Option((name,), flag, dest, kind, default, optional, False, choices, help_text)
        if member in _SCALARS:
            return Option((name,), flag, dest, member, default, optional, False, None, help_text)
        args = typing.get_args(member)
        if typing.get_origin(member) is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
            return Option((name,), flag, dest, args[0], default, optional, True, None, help_text)
    if hint is None and isinstance(default, _SCALARS):  # no annotation: the default's type
        return Option((name,), flag, dest, type(default), default, False, False, None, help_text)
    return None


def _field_default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"field {field.name!r} has no default: a command line cannot leave it out")


def _type_hints(obj) -> dict:
    try:
        return typing.get_type_hints(obj)
    except (NameError, TypeError):  # an annotation that does not evaluate: fall back to the defaults' types
        return {}


def _documented(obj, section: str) -> dict:
    """``{name: text}`` of the entries of a Google-style docstring section (``name: text`` or ``a, b: text``)."""
    lines = (inspect.getdoc(obj) or "").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"{section}:"]
    entries, names, indent = {}, None, None
    for line in lines[starts[0] + 1 :] if starts else []:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        match = re.match(r"(\w+(?:,\s*\w+)*):(\s|$)", line.strip())
        if depth == indent and match:
            names = [n.strip() for n in match.group(1).split(",")]
            text = line.strip()[match.end() :]
        elif depth > indent and names:
            text = line.strip()
        else:
            break
        for name in names:
            entries[name] = f"{entries.get(name, '')} {text}".strip()
    return {name: re.sub(r":\w+:`~?([^`]*)`", r"\1", text).replace("``", "") for name, text in entries.items()}


def _none_or(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse's "invalid float value"
    return parse
