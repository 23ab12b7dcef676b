"""The rules every command follows for the files it writes and the internal files it reads.

- **Never delete what it did not write.** :func:`check_owned_directory` refuses, before any work, an
  output directory holding files the command does not write; :func:`publish_directory` moves a staged
  directory's files into place one by one (``os.replace``), so a user's file beside them is never touched.
- **Recover by exact name.** A writer killed part-way leaves ``<name>.tmp-<pid>`` (work in progress) and
  ``<name>.previous-<pid>`` (what it was replacing). :func:`leftovers` finds them for an exact list of
  names only, so a neighbouring prefix (``D/uniref.v2`` beside ``D/uniref``) is never mistaken for ours.
- **No orphans.** A worker process calls :func:`die_with_parent` first, so a ``kill -9`` of the command
  takes its workers with it.
- **SIGTERM unwinds.** Inside :func:`terminate_as_interrupt` a scheduler's SIGTERM raises
  ``KeyboardInterrupt`` like Ctrl-C, so every ``except BaseException`` clean-up (staging removed, the
  previous output restored) runs instead of the process vanishing mid-write.
- **A damaged internal file is a message, not a traceback.** :func:`reading` turns whatever a parser
  raises on a file this package wrote (JSON, pickles, npy, tokenizer files) into
  :class:`DamagedFileError` ``FILE: what is wrong; fix``.

No torch here: preprocessing imports this module.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Collection, Iterable

TMP, PREVIOUS = "tmp", "previous"
_LEFTOVER = re.compile(r"\.(tmp|previous)-([0-9]+)")


class DamagedFileError(ValueError):
    """An internal file cannot be read; the message is ``FILE: what is wrong``, with the fix when known."""


def _describe(error: BaseException) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
    if isinstance(error, KeyError):
        return f"lacks the field {error.args[0]!r}" if error.args else "lacks a required field"
    if isinstance(error, EOFError):
        return "ends early (truncated?)"
    if isinstance(error, UnicodeDecodeError):
        return f"is not UTF-8 text (byte {error.start})"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:300]


@contextmanager
def reading(path: str | os.PathLike, fix: str = ""):
    """Run a block that parses ``path``: any parse error becomes ``DamagedFileError('PATH: problem; fix')``.
    ``FileNotFoundError`` passes through (a missing file is not a damaged one) and so do our own messages."""
    try:
        yield
    except (DamagedFileError, FileNotFoundError):
        raise
    except Exception as error:  # parsers raise anything (HF tokenizers: a bare Exception)
        suffix = f"; {fix}" if fix else ""
        raise DamagedFileError(f"{os.fspath(path)}: {_describe(error)}{suffix}") from error


def read_json(path: str | os.PathLike, *, fix: str = "", kind: type = dict):
    """The JSON value in ``path``, which must be a ``kind`` (an object by default)."""
    with reading(path, fix):
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
        if not isinstance(value, kind):
            raise ValueError(
                f"holds a JSON {type(value).__name__}, not {'an object' if kind is dict else kind.__name__}"
            )
        return value


def leftovers(names: Iterable[str | os.PathLike], kind: str) -> dict[int, list[tuple[Path, Path]]]:
    """``{pid: [(leftover, name), ...]}``: the files ``NAME.<kind>-<pid>`` of exactly the given names."""
    found: dict[int, list[tuple[Path, Path]]] = {}
    for name in names:
        name = Path(name)
        try:
            siblings = os.listdir(name.parent)
        except OSError:
            continue
        stem = name.name + "."
        for sibling in siblings:
            if not sibling.startswith(stem):
                continue
            match = _LEFTOVER.fullmatch(sibling[len(name.name) :])
            if match and match.group(1) == kind:
                found.setdefault(int(match.group(2)), []).append((name.with_name(sibling), name))
    return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this host); this process counts as not running for its own leftovers."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_owned_directory(final: str | os.PathLike, owned: Collection[str], *, what: str) -> Path:
    """Before any work: ``final`` is absent, empty, or holds only files named in ``owned`` (an earlier
    output of the same command, which may be replaced). Anything else there is the user's: refuse."""
    final = Path(final)
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise ValueError(f"{what} {final} exists and is not a directory; choose another path")
        foreign = sorted(name for name in os.listdir(final) if name not in owned)
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise FileExistsError(
                f"{what} {final} already holds files this command does not write ({', '.join(foreign[:3])}{more}); "
                "they would be mixed with its output: choose a new or empty directory"
            )
    return final


def check_output_prefix(prefix: str | os.PathLike, *, what: str = "--output-prefix") -> str:
    """A prefix of output files (``PREFIX.bin``, ``PREFIX.weights.tsv``, ...) must end in a file name stem:
    ``dir/`` or an existing directory would write hidden files ``dir/.bin``."""
    text = os.fspath(prefix)
    if not text or text.endswith(("/", os.sep)) or os.path.isdir(text) or os.path.basename(text) in (".", ".."):
        example = (text.rstrip("/" + os.sep) or "corpora") + "/corpus"
        raise ValueError(
            f"{what} {text!r} names a directory; give a path and a file name stem, e.g. {example} "
            "(the files are PREFIX.bin, PREFIX.idx, ...)"
        )
    return text


def staging_directory(final: str | os.PathLike, owned: Collection[str]) -> Path:
    """A new empty ``FINAL.tmp-<pid>`` beside ``final``. Stale ones of dead processes are removed, but
    only when they hold nothing but ``owned`` files (what this helper's callers write)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for pid, paths in leftovers([final], TMP).items():
        for staged, _ in paths:
            if pid_alive(pid) or not staged.is_dir() or set(os.listdir(staged)) - set(owned):
                continue
            shutil.rmtree(staged, ignore_errors=True)
    staging = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    staging.mkdir()
    return staging


def publish_directory(staging: Path, final: Path, order: Iterable[str]) -> Path:
    """Move the files of ``staging`` into ``final`` (created if absent) in ``order``, each atomically;
    remove the then-empty ``staging``. Files of ``final`` not named in ``order`` are left alone."""
    final = Path(final)
    if not final.exists():
        try:
            os.rename(staging, final)  # the whole directory at once
            return final
        except OSError:
            pass  # created meanwhile: move the files
    for name in order:
        if (staging / name).exists():
            os.replace(staging / name, final / name)
    staging.rmdir()
    return final


def die_with_parent(parent: int) -> None:
    """In a worker process (a pool's ``initializer``): SIGKILL this process when ``parent`` dies (Linux
    ``PR_SET_PDEATHSIG``), so a ``kill -9`` of the command leaves no worker behind. Elsewhere: nothing."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextmanager
def terminate_as_interrupt():
    """SIGTERM raises ``KeyboardInterrupt('signal 15')`` inside the block (main thread only)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class InsufficientSpaceError(ValueError):
    """The filesystem cannot hold what a command is about to write: refused before writing any of it."""


def _gb(size: float) -> str:
    return f"{size / 1e9:,.2f} GB" if size >= 1e7 else f"{size / 1e6:,.2f} MB"


def check_free_space(directory: str | os.PathLike, needed: int, *, what: str, fix: str, detail: str = "") -> None:
    """Refuse (:class:`InsufficientSpaceError`) when the filesystem of ``directory`` (or of its nearest existing
    parent) has fewer than ``needed`` bytes free. ``detail`` says how ``needed`` was estimated."""
    probe = Path(directory).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        how = f" ({detail})" if detail else ""
        raise InsufficientSpaceError(
            f"{what} needs about {_gb(needed)}{how} but {probe} has {_gb(free)} free: {fix}; nothing was written"
        )
