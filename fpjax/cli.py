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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import pathlib
import re
import sys
import types
import typing

import jax
import numpy as np
from tqdm import tqdm

from fpjax import pipeline, provenance
from fpjax.batch.precompute import ON_FAILURE, precompute
from fpjax.batch.seeding import SEED_RULES
from fpjax.bench import accuracy as accuracy_bench
from fpjax.bench import projection as projection_bench
from fpjax.bench import solver as solver_bench
from fpjax.data import load_dataset, load_image_folder
from fpjax.eval.figures import plot_convergence, plot_solutions
from fpjax.experiments import command as experiment_command
from fpjax.learn.models.unet import UNetConfig
from fpjax.learn.trainer import TrainConfig
from fpjax.solver.initial import METHODS
from fpjax.solver.problem import FPConfig
from fpjax.solver.projection import MODES
from fpjax.solver.scores import SCORE_COMPONENTS, score

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
      choices: the module-level tuple named after the field (``scheme`` -> ``SCHEMES``), or ``None``.
      help: the field's docstring entry (``Attributes:`` or ``Args:``), and an override's reason.
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
            choices = _module_choices(cls, field.name, default)
            options.append(dataclasses.replace(option, choices=choices) if option.kind is str else option)
    return options


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
        text = o.help.replace("%", "%%") + f" (default: %(default)s{none})"
        if o.kind is bool:  # --flag / --no-flag
            group.add_argument(o.flag, dest=o.dest, default=o.default, action=argparse.BooleanOptionalAction, help=text)
            continue
        kind = _none_or(o.kind) if o.optional else o.kind
        nargs = "*" if o.sequence else None
        group.add_argument(o.flag, dest=o.dest, type=kind, nargs=nargs, default=o.default, choices=o.choices, help=text)
    return options


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
    values = {}
    for field in dataclasses.fields(cls):
        default = getattr(defaults, field.name) if defaults is not None else _field_default(field)
        dest = f"{prefix}{field.name}".replace("-", "_")
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            values[field.name] = dataclass_from_args(type(default), args, defaults=default, prefix=f"{dest}_")
        elif hasattr(args, dest):
            value = getattr(args, dest)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    try:
        return dataclasses.replace(defaults, **values) if defaults is not None else cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{cls.__name__}: {error}") from error


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


def _module_choices(cls, name: str, default) -> tuple | None:
    """The tuple ``NAMES`` (``scheme`` -> ``SCHEMES``, ``boundary`` -> ``BOUNDARIES``) of ``cls``'s module or of
    an fpjax module it imports, when it lists ``default``."""
    module = sys.modules[cls.__module__]
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        plural = name.upper()[:-1] + "IES"
    else:
        plural = name.upper() + ("ES" if name.endswith(("s", "x", "ch", "sh")) else "S")
    spaces = [vars(module)] + [
        vars(value)
        for value in vars(module).values()
        if isinstance(value, types.ModuleType) and value.__name__.startswith("fpjax.")
    ]
    for space in spaces:
        values = space.get(plural)
        if isinstance(values, tuple) and all(isinstance(v, str) for v in values) and default in values:
            return values
    return None


def _none_or(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse's "invalid float value"
    return parse


# ----------------------------------------------------------------------------------------------
# fpjax precompute

PRECOMPUTE_OPTIONS = function_options(
    precompute,
    ("projection", "dim", "cycle", "seeds", "batch_size", "density", "on_failure"),
    choices={"projection": MODES, "seeds": SEED_RULES, "density": METHODS, "on_failure": ON_FAILURE},
)
"""The options of :func:`fpjax.precompute`'s keyword arguments (``fpjax precompute``)."""


def _load_images(args):
    if args.images is not None:
        images, names = load_image_folder(args.images, args.size)
        return images[: args.n], names[: args.n]
    return load_dataset(args.data, args.size, args.n)


def precompute_command(args) -> int:
    """Solve the FP equation for each image with :func:`fpjax.precompute`, into ``--store`` or ``fp_solutions.npz``."""
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    config = dataclass_from_args(FPConfig, args)
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
        "| max residual | converged images |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {count} | {result.skipped} | {result.seconds:.2f} | {median:.3f} | "
        f"{stats['outer_iterations'].mean():.2f} | {linear.mean() if linear.min() >= 0 else float('nan'):.2f} | "
        f"{stats['residual'].max():.2e} | {int(stats['converged'].all(axis=(1, 2)).sum())}/{count} |"
    )


def _save_solutions(out: pathlib.Path, images, names, result, config: FPConfig, args) -> None:
    """``fp_solutions.npz`` (``m`` ``(N, T+1, H, W, K)``, ``score`` ``(N, T+1, H, W, K, 2)``), and two figures."""
    out.mkdir(parents=True, exist_ok=True)
    k = result.stats["converged"].shape[1]
    m = np.asarray(result.m)[..., :k]  # K = 1 where one density serves all channels
    fields = np.moveaxis(m, -1, 2)  # (N, T+1, K, H, W): what fpjax.score and the figures take
    scores = np.moveaxis(np.asarray(score(fields, config.boundary)), (2, 3), (-2, -1))  # (x, y) last
    path = out / "fp_solutions.npz"
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
        density=args.density,
        channels_shared=k == 1,
    )
    shown = min(len(images), 4)
    title = f"log-density m and pixel score ({args.density})"
    fig = plot_solutions(images[:shown], fields[:shown, :, 0], names[:shown], boundary=config.boundary,
                         component=args.component, title=title)  # fmt: skip
    fig.savefig(out / "precompute.png", dpi=110)
    fig = plot_convergence(result.stats["outer_iterations"][:, 0], result.stats["residual"][:, 0], names)
    fig.savefig(out / "convergence.png", dpi=110)
    print(f"wrote {path} (m {m.shape}, score {scores.shape}), {out / 'precompute.png'}, {out / 'convergence.png'}")


# ----------------------------------------------------------------------------------------------
# fpjax run

RUN_OUTPUTS = ("denoising.png", "ssim_vs_time.png", "metrics.json", "training_log.json", "checkpoint", "fp_store.zarr")


def run_command(args) -> int:
    """The main job (:func:`fpjax.pipeline.run`): pre-compute, embed, train to the target SSIM, denoise, generate."""
    images, names = _load_images(args)
    out = pathlib.Path(args.out)
    print(
        f"fpjax run: {len(images)} images {images.shape[1]}x{images.shape[2]}, target SSIM {args.target_ssim}, "
        f"outputs in {out}/ (run again to resume)",
        flush=True,
    )
    report = pipeline.run(
        images,
        out,
        names=names,
        fp_config=dataclass_from_args(FPConfig, args),
        unet_config=dataclass_from_args(UNetConfig, args),
        train_config=dataclass_from_args(TrainConfig, args),
        run_config=dataclass_from_args(pipeline.RunConfig, args),
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
        "--data", default="samples", help="samples | cifar10:PATH[:CLASS] | folder:PATH (CelebA layout)"
    )
    parser.add_argument("--images", help="folder of PNG/JPEG images of one shape (alternative to --data)")
    parser.add_argument("--size", type=int, default=size_default, help=size_help)
    parser.add_argument("--n", type=int, help="use only the first N images")
    parser.add_argument("--out", default="fpjax_out")


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
    pre.add_argument("--dtype", choices=["float32", "float64"], default="float32")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fpjax", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    _add_precompute_parser(sub)
    experiment = sub.add_parser("experiment", help="the papers' experiments beside a DDPM baseline")
    experiment_command.add_arguments(experiment)
    experiment.set_defaults(func=experiment_command.run)
    _add_bench_parsers(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ConfigError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
