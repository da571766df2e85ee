"""The ``fpjax`` command line: a thin layer over the library.

fpjax run [--data samples] [--size 32] [--target-ssim 0.9] ... --out DIR
fpjax experiment exp1|exp2|exp3|all [--quick] --out DIR
fpjax precompute [--images DIR] [--size 32] [--T 100] ... --out DIR
fpjax bench solver [--sizes 32 64 128 256] ... --out FILE.json

The options of the library's settings are generated from its configuration
dataclasses (FPConfig, TrainConfig, SamplerConfig, UNetConfig, RunConfig)
and from precompute's keyword arguments: names, types, defaults and help
come from the fields and their docstrings, so they cannot drift from the
library. `fpjax run` departs from TrainConfig's defaults only where
fpjax.pipeline.TRAIN_OVERRIDES says, and its --help shows why.

Errors: a mistake you can fix (an option's value, a missing or unreadable
input, a store written with other settings, a read-only or full disk) prints
one line naming it, and the fix, with no traceback; exit status 2 for options,
1 for inputs, stores and disks. --debug (`fpjax --debug COMMAND ...` or
`fpjax COMMAND ... --debug`) shows the traceback instead. Anything else is a
bug in fpjax: it prints its traceback; please report it.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import inspect
import json
import logging
import os
import pathlib
import re
import sys
import types
import typing
import warnings

import jax
import numpy as np
from tqdm import tqdm

import fpjax
from fpjax import files, pipeline, provenance
from fpjax.batch.precompute import ON_FAILURE, check_memory, precompute
from fpjax.batch.seeding import SEED_RULES
from fpjax.bench import accuracy as accuracy_bench
from fpjax.bench import projection as projection_bench
from fpjax.bench import solver as solver_bench
from fpjax.data import image_paths, image_shape, load_dataset, load_image_folder
from fpjax.eval.figures import plot_convergence, plot_solutions
from fpjax.experiments import command as experiment_command
from fpjax.learn.models.unet import UNetConfig
from fpjax.learn.trainer import TrainConfig
from fpjax.memory import InsufficientMemoryError
from fpjax.solver.initial import METHODS
from fpjax.solver.problem import ConvergenceError, FPConfig
from fpjax.solver.projection import MODES
from fpjax.solver.scores import SCORE_COMPONENTS, score

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


# ----------------------------------------------------------------------------------------------
# fpjax precompute

PRECOMPUTE_OPTIONS = function_options(
    precompute,
    ("projection", "dim", "cycle", "seeds", "batch_size", "density", "on_failure"),
    choices={"projection": MODES, "seeds": SEED_RULES, "density": METHODS, "on_failure": ON_FAILURE},
)
"""The options of :func:`fpjax.precompute`'s keyword arguments (``fpjax precompute``)."""


def output_folder(path) -> pathlib.Path:
    """``path`` as a folder to write into, created if missing.

    Raises:
      FileExistsError: ``path`` is a file; PermissionError: it cannot be written (read-only, no permission).
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(errno.EEXIST, "the output folder is a file", str(path))
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "the output folder is not writable", str(path))
    return path


def _load_images(args):
    if args.images is not None and args.data is not None:
        raise ConfigError(f"--images {args.images} and --data {args.data} both name the images: give one")
    if args.images is not None:
        if args.size is None:  # before decoding: a large image is refused with the fix (--size), not loaded
            _check_image_sizes(args)
        images, names = load_image_folder(args.images, args.size)
        if args.n is not None and args.n > len(images):
            raise ValueError(f"{args.images} has {len(images)} images, fewer than --n {args.n}")
        return images[: args.n], names[: args.n]
    return load_dataset(args.data or "samples", args.size, args.n)


def _check_image_sizes(args) -> None:
    """The memory a folder's images would need at their own size (from their headers), checked before decoding."""
    paths = image_paths(args.images)
    shapes = [shape for shape in map(image_shape, paths) if shape is not None]
    if not shapes:
        return
    height, width = max(shapes, key=lambda hw: hw[0] * hw[1])
    count = min(len(paths), args.n or len(paths))
    store = getattr(args, "store", None)
    per_channel = True if getattr(args, "per_channel", False) else None
    try:
        config, batch_size = dataclass_from_args(FPConfig, args), getattr(args, "batch_size", 16)
        check_memory((count, height, width, 3), config, batch_size=batch_size, in_memory=store is None,
                     per_channel=per_channel)  # fmt: skip
    except InsufficientMemoryError as error:
        raise InsufficientMemoryError(
            f"{error}; or pass --size 64 (or 128) to resize the images as they are read"
        ) from None


def precompute_command(args) -> int:
    """Solve the FP equation for each image with :func:`fpjax.precompute`, into ``--store`` or ``fp_solutions.npz``."""
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    config = dataclass_from_args(FPConfig, args)
    if args.store is None:
        output_folder(args.out)  # before any work: a read-only or misnamed --out fails now, not after the solves
    elif pathlib.Path(args.store).is_file():
        raise FileExistsError(errno.EEXIST, "--store is a file, not a zarr store folder", args.store)
    images, names = _load_images(args)
    images = images.astype(args.dtype)
    target = args.store or pathlib.Path(args.out) / "fp_solutions.npz"
    print(
        f"fpjax precompute: {len(images)} images {images.shape[1]}x{images.shape[2]} -> {target}, {config}", flush=True
    )
    with tqdm(total=len(images), desc="FP solve", unit="image", file=sys.stdout) as bar:
        result = precompute(
            images,
            config,
            store=args.store,
            ids=names,
            per_channel=True if args.per_channel else None,
            progress=lambda done, total: bar.update(done - bar.n),
            on_batch=functools.partial(_print_images, bar, names),
            **kwargs_from_args(PRECOMPUTE_OPTIONS, args),
        )
    _print_summary(result, len(images))
    if args.store is None:
        _save_solutions(pathlib.Path(args.out), images, names, result, config, args)
    return 0


def _print_images(bar, names, indices, stats, seconds) -> None:
    """One line of solver statistics per image of a finished batch (:func:`fpjax.precompute`'s ``on_batch``)."""
    for row, index in enumerate(indices):
        outer, linear = stats["outer_iterations"][row], stats["linear_iterations"][row]
        converged = stats["converged"][row]
        linear_text = f"{linear.mean() / max(outer.mean(), 1):5.1f}" if linear.min() >= 0 else "  n/a"
        bar.write(
            f"{names[index]:32s} {seconds / len(indices):7.2f} s/image  outer/step {outer.mean():5.2f} "
            f"(max {outer.max():2d})  linear/solve {linear_text}  max residual {stats['residual'][row].max():.2e}  "
            f"converged {int(converged.sum())}/{converged.size}"
        )


def _print_summary(result, count: int) -> None:
    stats = result.stats
    linear = stats["linear_iterations"]
    median = np.median(result.batch_seconds) if result.batch_seconds else float("nan")
    print(
        "| images | skipped (already in store) | wall s | s/batch (median) | outer/step | linear/step "
        "| max residual | converged images | repaired (failed verification) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {count} | {result.skipped} | {result.seconds:.2f} | {median:.3f} | "
        f"{stats['outer_iterations'].mean():.2f} | {linear.mean() if linear.min() >= 0 else float('nan'):.2f} | "
        f"{stats['residual'].max():.2e} | {int(stats['converged'].all(axis=(1, 2)).sum())}/{count} | "
        f"{result.repaired} |"
    )


def _save_solutions(out: pathlib.Path, images, names, result, config: FPConfig, args) -> None:
    """``fp_solutions.npz`` (``m`` ``(N, T+1, H, W, K)``, ``score`` ``(N, T+1, H, W, K, 2)``: the layouts of
    ``docs/conventions.md``), and two figures."""
    out.mkdir(parents=True, exist_ok=True)
    k = result.stats["converged"].shape[1]
    m = np.asarray(result.m)[..., :k]  # K = 1 where one density serves all channels
    scores = np.asarray(score(m, config.boundary, channel_axis=-1))  # (N, T+1, H, W, K, 2)
    path, figure_paths = out / "fp_solutions.npz", (out / "precompute.png", out / "convergence.png")
    shown = min(len(images), 4)
    title = f"log-density m and pixel score ({args.density})"
    figures = (
        plot_solutions(images[:shown], m[:shown, ..., 0], names[:shown], boundary=config.boundary,
                       component=args.component, title=title),
        plot_convergence(result.stats["outer_iterations"][:, 0], result.stats["residual"][:, 0], names),
    )  # fmt: skip
    # all three, or none: a failed write (a full disk) leaves an earlier run's files as they were, never a mixture
    with files.atomic(path, *figure_paths) as (npz, *pngs):
        _write_solutions(npz, m, scores, names, result, config, args.density)
        for figure, png in zip(figures, pngs, strict=True):
            figure.savefig(png, dpi=110)
    print(f"wrote {path} (m {m.shape}, score {scores.shape}), {out / 'precompute.png'}, {out / 'convergence.png'}")


def _write_solutions(path: pathlib.Path, m, scores, names, result, config: FPConfig, density: str) -> None:
    np.savez_compressed(
        path,
        m=m,
        score=scores,
        names=np.array(names),
        **result.stats,
        seeds=result.seeds,
        batch_seconds=np.array(result.batch_seconds),
        seconds=result.seconds,
        config=json.dumps(provenance.jsonable(config)),
        density=density,
        channels_shared=m.shape[-1] == 1,
    )


# ----------------------------------------------------------------------------------------------
# fpjax run

RUN_OUTPUTS = ("denoising.png", "ssim_vs_time.png", "metrics.json", "training_log.json", "checkpoint", "fp_store.zarr")


def run_command(args) -> int:
    """The main job (:func:`fpjax.pipeline.run`): pre-compute, embed, train to the target SSIM, denoise, generate."""
    configs = {cls: dataclass_from_args(cls, args) for cls in (FPConfig, UNetConfig, TrainConfig, pipeline.RunConfig)}
    out = output_folder(args.out)
    images, names = _load_images(args)
    print(
        f"fpjax run: {len(images)} images {images.shape[1]}x{images.shape[2]}, target SSIM {args.target_ssim}, "
        f"outputs in {out}/ (run again to resume)",
        flush=True,
    )
    report = pipeline.run(
        images,
        out,
        names=names,
        fp_config=configs[FPConfig],
        unet_config=configs[UNetConfig],
        train_config=configs[TrainConfig],
        run_config=configs[pipeline.RunConfig],
    )
    print("| image | steps | reached | train s | SSIM at stop | SSIM, final model | PSNR, final model |")
    print("|---|---|---|---|---|---|---|")
    for p in report["per_image"]:
        print(
            f"| {p['name']} | {p['steps']} | {'yes' if p['reached_target'] else 'no'} | {p['train_seconds']:.1f} | "
            f"{p['ssim_at_stop']:.3f} | {p['final_model_ssim']:.3f} | {p['final_model_psnr']:.2f} |"
        )
    print(
        f"pre-computation {report['precompute_seconds']:.1f} s + training {report['train_seconds']:.1f} s; "
        f"{report['reached_target']}/{report['images']} images reached SSIM {args.target_ssim}"
    )
    if "generated" in report:
        print(
            f"generated {report['generated']['count']}: mean SSIM to the nearest training image "
            f"{report['generated']['mean_nearest_training_ssim']:.3f}"
        )
    for name in RUN_OUTPUTS:
        print(f"  {out / name}")
    return 0


# ----------------------------------------------------------------------------------------------
# The parser


def _add_input_options(parser, size_help: str, size_default=None) -> None:
    parser.add_argument(
        "--data", help="samples (default) | cifar10:PATH[:CLASS] | folder:PATH (CelebA layout); or --images"
    )
    parser.add_argument("--images", help="folder of PNG/JPEG images of one shape (alternative to --data)")
    parser.add_argument("--size", type=positive_int, default=size_default, help=size_help)
    parser.add_argument("--n", type=positive_int, help="use only the first N images (N > 0)")
    parser.add_argument("--out", default="fpjax_out", help="output folder (created if missing)")


def _add_run_parser(sub) -> None:
    job = sub.add_parser("run", help="the main job: pre-compute, embed, train to the target SSIM, denoise, generate")
    _add_input_options(job, "image size (sample images: 32, 64 or 128)", 32)
    add_dataclass_options(job, FPConfig)
    add_dataclass_options(job, TrainConfig, overrides=pipeline.TRAIN_OVERRIDES)
    add_dataclass_options(job, UNetConfig)
    add_dataclass_options(job, pipeline.RunConfig)
    job.set_defaults(func=run_command)


def _add_precompute_parser(sub) -> None:
    pre = sub.add_parser("precompute", help="solve the log-density FP equation for images")
    size_help = "image size (sample images: 32 (default), 64 or 128; a folder's images are resized to size x size "
    _add_input_options(pre, size_help + "when given, else kept as they are)")
    pre.add_argument("--store", help="zarr store to stream to (resumable); without it: fp_solutions.npz + figures")
    pre.add_argument("--per-channel", action="store_true", help="one density per channel")
    pre.add_argument("--component", choices=SCORE_COMPONENTS, default="sum", help="pixel score shown")
    pre.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="precision of the solves")
    add_options(pre, PRECOMPUTE_OPTIONS, "fpjax.precompute")
    add_dataclass_options(pre, FPConfig)
    pre.set_defaults(func=precompute_command)


def _add_bench_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks (measurements, not tests)")
    commands = bench.add_subparsers(dest="bench", required=True)
    for name, module, text in (
        ("solver", solver_bench, "fpjax against SciPy spsolve on the same discretisation"),
        ("projection", projection_bench, "the cross-matrix paper's Table 4: projection vs spsolve"),
        ("accuracy", accuracy_bench, "every scheme's error against the PDE's solution, orders in h, dt"),
    ):
        parser = commands.add_parser(name, help=text)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are two lines (the error, where to read the options) and which
    takes ``--debug`` at every level: ``fpjax --debug precompute ...`` or ``fpjax precompute ... --debug``."""

    def __init__(self, *args, top: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            default=False if top else argparse.SUPPRESS,  # a subcommand's leaves the top level's value
            help="on an error, show the traceback instead of one line",
        )

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n  `{self.prog} --help` lists the options\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="fpjax", description=__doc__, formatter_class=argparse.RawTextHelpFormatter, top=True)
    parser.add_argument("--version", action="version", version=f"fpjax {fpjax.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_precompute_parser(sub)
    experiment = sub.add_parser("experiment", help="the papers' experiments beside a DDPM baseline")
    experiment_command.add_arguments(experiment)
    experiment.set_defaults(func=experiment_command.run)
    _add_bench_parsers(sub)
    return parser


# ----------------------------------------------------------------------------------------------
# Errors a user can cause: one line naming the thing and the fix, no traceback (--debug shows it)

USAGE_ERROR = 2
"""Exit status of an option the command refuses (argparse's, and a configuration's :class:`ConfigError`)."""
INPUT_ERROR = 1
"""Exit status of an input, store or disk that stops the command (a missing file, a full disk, ...)."""

_FIXES = {
    errno.ENOSPC: "free some disk space or write elsewhere (--out, --store), then run the same command again",
    errno.EDQUOT: "free some of your disk quota or write elsewhere (--out, --store), then run the command again",
    errno.EROFS: "that file system is read-only: write elsewhere (--out, --store)",
    errno.EACCES: "check its permissions, or write elsewhere (--out, --store)",
    errno.EPERM: "check its permissions, or write elsewhere (--out, --store)",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path: a part of it is a file, not a folder",
    errno.EISDIR: "it is a folder: give a file",
    errno.EEXIST: "give the path of a folder, or a new path",
}
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
_PACKAGE = pathlib.Path(__file__).resolve().parent


def explain(error: BaseException, command: str) -> tuple[int, str, str | None] | None:
    """``(exit status, message, hint or None)`` for an error a user can cause and fix; ``None`` for a bug.

    A user's: :class:`ConfigError` (status 2); ``ValueError`` (a store's mismatch or integrity errors, a
    loader's, a configuration's), ``FloatingPointError`` (training diverged: its message names the setting),
    :class:`fpjax.ConvergenceError`, ``TimeoutError``, XLA's ``RESOURCE_EXHAUSTED`` (out of memory: a smaller
    batch), and the ``OSError``s of paths, permissions and full or read-only disks (status 1). A
    ``ValueError`` or ``FloatingPointError`` raised outside fpjax (NumPy, JAX) is still one line, with a hint
    to rerun with ``--debug``: it may be a check fpjax lacks.
    """
    if isinstance(error, ConfigError):
        return USAGE_ERROR, _one_line(error), f"`fpjax {command} --help` lists the options"
    if isinstance(error, OSError) and error.errno in _FIXES:
        path = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
        return INPUT_ERROR, f"{error.strerror}" + (f": {path}" if path else ""), _FIXES[error.errno]
    if isinstance(error, _PATH_ERRORS + (TimeoutError, ConvergenceError)) and error.args:
        return INPUT_ERROR, _one_line(error), None
    full = _full_disk(error)
    if full is not None:  # tensorstore (orbax's checkpoints) says so in words, not with an errno
        return INPUT_ERROR, f"{os.strerror(errno.ENOSPC)}" + (f": {full}" if full else ""), _FIXES[errno.ENOSPC]
    if isinstance(error, InsufficientMemoryError):  # estimated before allocating: the message holds the fix
        return INPUT_ERROR, _one_line(error), None
    if isinstance(error, RuntimeError) and "RESOURCE_EXHAUSTED" in str(error):  # XLA's out of memory
        first = str(error).strip().splitlines()[0]
        return INPUT_ERROR, f"out of memory ({first})", "lower --batch-size (or --size), or use a larger device"
    if isinstance(error, ValueError | FloatingPointError):  # FloatingPointError: training diverged (settings)
        where = _raised_in(error)
        hint = None if where == "fpjax" else f"raised inside {where}: rerun with --debug for the traceback"
        return INPUT_ERROR, _one_line(error), hint
    return None


def _full_disk(error: BaseException) -> str | None:
    """The path a write failed on for a full disk reported in a message (tensorstore's ``RESOURCE_EXHAUSTED ...
    No space left on device [os_error_code='28']``), ``""`` if it names none, ``None`` if it is another error."""
    text = str(error)
    if isinstance(error, OSError) or not ("os_error_code='28'" in text or "No space left on device" in text):
        return None
    match = re.search(r'local file "([^"]+)"', text)
    return re.sub(r"\.orbax-checkpoint-tmp.*$", "", match.group(1)) if match else ""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _raised_in(error: BaseException) -> str:
    """``"fpjax"``, or the top-level package of the innermost frame where ``error`` was raised."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return "fpjax"
    path = pathlib.Path(frame.tb_frame.f_code.co_filename).resolve()
    if path.is_relative_to(_PACKAGE):
        return "fpjax"
    module = frame.tb_frame.f_globals.get("__name__", "") or path.name
    return module.split(".")[0]


def main(argv=None) -> int:
    """The console script: parse ``argv``, run the command; an error a user can fix exits with one line.

    Raises:
      SystemExit: status 2 for a refused option, 1 for an input, store or disk (:func:`explain`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    absl, absl_level = logging.getLogger("absl"), logging.getLogger("absl").level
    if not args.debug:  # a warning is a line for the user, not a source location
        warnings.formatwarning = lambda message, category, *_: f"fpjax {args.command}: {category.__name__}: {message}\n"
        # orbax's writer threads log each failure with its traceback (a full disk: hundreds of lines) before the
        # main thread raises it; the one line below reports it, --debug shows the threads' logs
        absl.setLevel(logging.CRITICAL)
    try:
        return args.func(args) or 0
    except Exception as error:
        report = None if args.debug else explain(error, args.command)
        if report is None:
            raise  # a bug (or --debug): the traceback
        status, message, hint = report
        print(f"fpjax {args.command}: error: {message}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
        raise SystemExit(status) from None
    except KeyboardInterrupt:
        if args.debug:
            raise
        # Everything finished is on disk (stores and checkpoints are written image by image): say how to go on.
        print(f"fpjax {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        warnings.formatwarning = formatwarning
        absl.setLevel(absl_level)


if __name__ == "__main__":
    sys.exit(main())
