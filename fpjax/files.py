"""Result files written atomically: each goes to a temporary name in its own folder and is renamed into place
only once it is whole, so an interrupted or failed write (a full disk, a kill) never leaves a half-written file
under the final name, nor destroys the result an earlier run left there.

Every file fpjax's command line, pipeline, experiments and benchmarks write (npz, JSON, Markdown, figures)
goes through here; the zarr store and the checkpoints have their own integrity (checksums, digests). This
module sits at the lowest layer: it imports no other fpjax module.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator


@contextlib.contextmanager
def atomic(*paths) -> Iterator[list[pathlib.Path]]:
    """Temporary names to write ``paths`` to (same folder, same suffix, so that writers which go by the suffix
    still do); when the block ends they are flushed to disk and renamed to ``paths`` together, and if it raises
    they are removed and ``paths`` left as they were. An ``OSError`` names the final path, not the temporary one.
    """
    finals = [pathlib.Path(p) for p in paths]
    temporaries = [p.with_name(f".{p.stem}.partial-{os.getpid()}{p.suffix}") for p in finals]
    try:
        yield temporaries
        for temporary in temporaries:
            _flush(temporary)
        for temporary, final in zip(temporaries, finals, strict=True):
            os.replace(temporary, final)
    except OSError as error:  # name the final path (the first, where the error names no file: a full disk on close)
        names = {str(t): str(f) for t, f in zip(temporaries, finals, strict=True)}
        if error.filename is None or str(error.filename) in names:
            error.filename = names.get(str(error.filename), str(finals[0]))
        raise
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


def _flush(path: pathlib.Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic(path) as (temporary,):
        temporary.write_text(text)


def write_json(path, value, indent: int = 1) -> None:
    """Write ``value`` as JSON to ``path`` atomically (serialised first: a value JSON cannot hold writes nothing)."""
    write_text(path, json.dumps(value, indent=indent))


def save_figure(figure, path, **kwargs) -> None:
    """``figure.savefig(path, **kwargs)``, atomically."""
    with atomic(path) as (temporary,):
        figure.savefig(temporary, **kwargs)
