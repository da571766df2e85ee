"""The ``fpjax`` command line: a thin layer over the library.

fpjax run [--data samples] [--size 32] [--target-ssim 0.9] ... --out DIR
fpjax experiment exp1|exp2|exp3|all [--quick] --out DIR
fpjax precompute [--images DIR] [--size 32] [--T 100] ... --out DIR
  (run and precompute, one command per host: --coordinator HOST:PORT --num-processes N --process-id I)
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

import logging
import os
import sys
import traceback
import warnings

import jax

from fpjax.cli.commands import PRECOMPUTE_OPTIONS, build_parser, output_folder, precompute_command, run_command
from fpjax.cli.errors import INPUT_ERROR, USAGE_ERROR, explain
from fpjax.cli.options import (
    POSITIVE_OPTIONS,
    ConfigError,
    Option,
    add_dataclass_options,
    add_options,
    dataclass_from_args,
    dataclass_options,
    finite_float,
    function_options,
    kwargs_from_args,
    positive_float,
    positive_int,
    variant_options,
)

__all__ = [
    "INPUT_ERROR",
    "POSITIVE_OPTIONS",
    "PRECOMPUTE_OPTIONS",
    "USAGE_ERROR",
    "ConfigError",
    "Option",
    "add_dataclass_options",
    "add_options",
    "build_parser",
    "dataclass_from_args",
    "dataclass_options",
    "explain",
    "finite_float",
    "function_options",
    "kwargs_from_args",
    "main",
    "output_folder",
    "positive_float",
    "positive_int",
    "precompute_command",
    "run_command",
    "variant_options",
]


def main(argv=None) -> int:
    """The console script: parse ``argv``, run the command; an error a user can fix exits with one line.

    Raises:
      SystemExit: status 2 for a refused option, 1 for an input, store or disk (:func:`explain`).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    absl, absl_level, unraisablehook = logging.getLogger("absl"), logging.getLogger("absl").level, sys.unraisablehook
    if not args.debug:  # a warning is a line for the user, not a source location
        warnings.formatwarning = lambda message, category, *_: f"fpjax {args.command}: {category.__name__}: {message}\n"
        # orbax's writer threads log each failure with its traceback (a full disk: hundreds of lines) before the
        # main thread raises it; the one line below reports it, --debug shows the threads' logs
        absl.setLevel(logging.CRITICAL)
        # ... and tensorstore's futures, collected after such a failure, raise "Event loop is closed" in their
        # finalizers, which Python prints as "Exception ignored in ..." with a traceback: not the user's concern
        sys.unraisablehook = lambda unraisable: None
    try:
        return args.func(args) or 0
    except Exception as error:
        report = None if args.debug else explain(error, args.command)
        if report is None:
            if jax.process_count() > 1:
                traceback.print_exc()
                _leave(1)
            raise  # a bug (or --debug): the traceback
        status, message, hint = report
        print(f"fpjax {args.command}: error: {message}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
        if jax.process_count() > 1:
            _leave(status)
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
        sys.unraisablehook = unraisablehook


def _leave(status: int):
    """Exit a process of a multi-process run at once: JAX's shutdown would wait for the other processes (minutes)
    and then abort; leaving, the others notice its missing heartbeat and stop with a message naming it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
