"""Output files of the commands: checked before the work starts, written whole or not at all.

A command that computes for minutes and then cannot write its result wastes those minutes, so
:func:`prepare_output` creates the parent folders and proves the folder writable up front;
:func:`write_text_atomic` writes under a temporary name and renames, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def prepare_output(path: str | os.PathLike, *, what: str = "output") -> Path:
    """Create ``path``'s parent folders and check that a file can be written there; ``ValueError`` if not."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be written ({error.strerror or error}); choose another path") from None
    return path


def prepare_output_dir(path: str | os.PathLike, *, what: str = "output directory") -> Path:
    """Create directory ``path`` (and parents) and check that files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory")
    prepare_output(path / ".write-check", what=what)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
