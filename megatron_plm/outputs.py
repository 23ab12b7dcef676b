"""Output files of the commands: checked before the work starts, written whole or not at all.

A command that computes for minutes and then cannot write its result wastes those minutes, so
:func:`prepare_output` creates the parent folders and proves the folder writable up front;
:func:`write_text_atomic` writes under a temporary name and renames, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
import secrets
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


def staging_path(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` to write under before renaming onto ``path``.

    Open it with ``open(..., "x")`` (not ``tempfile.mkstemp``, whose files are owner-only): the renamed
    file then has the permissions of any file the user creates, under their umask (0644 under 022)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def follow_umask(path: str | os.PathLike) -> Path:
    """Give ``path`` the permissions a plain ``open()`` would have (``0o666`` less the umask), for files that
    a library writes owner-only (``safetensors.torch.save_file`` creates 0600 files)."""
    path = Path(path)
    path.chmod(0o666 & ~_umask())
    return path


def _umask() -> int:
    """This process's umask, read without changing it where Linux reports it (``os.umask`` can only set it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextmanager
def replacing(path: str | os.PathLike, *, suffix: str = ""):
    """Yield a fresh name beside ``path`` to write the file under; when the block succeeds it is renamed onto
    ``path``, when it fails it is removed: ``path`` is never half-written, and an old one survives a failure.
    ``suffix`` ends the staging name for writers that add one (``np.savez``: ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = staging_path(path).with_name(staging_path(path).name + suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    with replacing(path) as temporary, open(temporary, "x") as handle:
        handle.write(text)
    return Path(path)
