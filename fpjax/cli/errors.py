"""Errors a user can cause and fix, told apart from bugs: one line naming the thing and the fix, and the exit
status (:data:`USAGE_ERROR` for options, :data:`INPUT_ERROR` for inputs, stores and disks)."""

from __future__ import annotations

import errno
import os
import pathlib
import re

from fpjax.cli.options import ConfigError
from fpjax.devices import PeerLostError
from fpjax.memory import InsufficientMemoryError
from fpjax.solver.problem import ConvergenceError

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
_RESTART = "see the other processes' output, then run the same commands again to resume"
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
_PACKAGE = pathlib.Path(__file__).resolve().parent.parent  # fpjax/


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
    if isinstance(error, PeerLostError):
        return INPUT_ERROR, _one_line(error), None
    if isinstance(error, ValueError) and "Gloo" in str(error):  # a collective whose peer went away
        return INPUT_ERROR, f"another process of this run stopped ({_one_line(error)[:200]})", _RESTART
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
    if not ("os_error_code='28'" in text or "No space left on device" in text):
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
