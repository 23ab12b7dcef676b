"""Streaming FASTA and JSONL input that names the file, line and record in every error.

Input is read as chunks of whole records (:func:`iter_chunks`), so memory stays
bounded whatever the file size and chunks can be handed to worker processes.
:func:`split_fasta_records` is the pure-Python reference parser of a chunk; the
C++ extension (``csrc/fasta``) implements the same rules, and both report problems
as :class:`ChunkProblem`, turned into one message format by :func:`problem_to_error`.

FASTA rules: plain or gzip (detected by magic bytes); LF or CRLF; wrapped or
single-line; blank lines ignored; the record id is the header's first
whitespace-separated word; the header must be valid UTF-8.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

DEFAULT_CHUNK_BYTES = 8 << 20


class InputFormatError(ValueError):
    """Malformed input. The message starts with ``FILE:LINE`` and names the record."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str, record: str | None = None):
        self.path = os.fspath(path)
        self.line = line
        self.record = record
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        what = f" (record {record!r})" if record is not None else ""
        super().__init__(f"{where}{what}: {problem}")

    def __reduce__(self):  # keep the fields when raised in a worker process
        return (type(self), (self.path, self.line, self.problem, self.record))


# Problem kinds shared with the C++ parser (same codes in csrc/fasta/fasta_encode.cpp).
BINARY, BEFORE_HEADER, NO_SEQUENCE, EMPTY_ID, BAD_UTF8, BAD_RESIDUE = range(1, 7)
_BINARY_TEXT = "binary data (NUL byte): not a text FASTA/JSONL file"
_SNIFF_BYTES = 1 << 16
_PROBLEM_TEXT = {
    BINARY: _BINARY_TEXT,
    BEFORE_HEADER: "sequence data before the first '>' header",
    NO_SEQUENCE: "header with no sequence",
    EMPTY_ID: "empty FASTA header ('>' with no id)",
    BAD_UTF8: "header is not valid UTF-8",
}


@dataclass(frozen=True)
class ChunkProblem:
    """A problem found in a chunk, located by line within the chunk (0-based)."""

    kind: int
    line_in_chunk: int
    record: str | None = None
    character: int | None = None
    """The offending byte, for BAD_RESIDUE."""
    position: int | None = None
    """1-based residue position, for BAD_RESIDUE."""


def problem_to_error(problem: ChunkProblem, path: str | os.PathLike, first_line: int) -> InputFormatError:
    if problem.kind == BAD_RESIDUE:
        char = chr(problem.character) if 32 < problem.character < 127 else f"byte 0x{problem.character:02x}"
        text = f"invalid residue {char!r} at position {problem.position}"
        if char in ("-", "."):  # a gap: the file is an alignment, and --unknown would be the wrong fix
            text += (
                " (a gap: this is an alignment; read it with --input-format a2m (lower case insertions) or "
                "--input-format afa (aligned FASTA), which drop the gaps)"
            )
        else:
            text += " (use --unknown unk to map it to <unk>, or --unknown skip to drop such records)"
    else:
        text = _PROBLEM_TEXT[problem.kind]
    return InputFormatError(path, first_line + problem.line_in_chunk, text, problem.record)


class ChunkError(Exception):
    def __init__(self, problem: ChunkProblem):
        self.problem = problem


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open plain or gzip input by its magic bytes, not its suffix."""
    handle = open(path, "rb")
    magic = handle.read(2)
    handle.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle


def iter_chunks(
    path: str | os.PathLike, *, boundary: bytes = b"\n>", chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(first_line, chunk)``: pieces of the decompressed file that end on a record boundary.

    ``boundary`` is ``b"\\n>"`` for FASTA (a chunk ends just before a header) and ``b"\\n"`` for
    JSONL. Raises :class:`InputFormatError` for a truncated or corrupt gzip stream.
    """
    if os.path.isdir(path):
        raise InputFormatError(path, None, "is a directory; give a file (or a glob such as DIR/*.fasta.gz)")
    line = 1
    carry = b""
    with open_binary(path) as handle:
        while True:
            try:
                block = handle.read(chunk_bytes)
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
                raise InputFormatError(
                    path, line + carry.count(b"\n"), f"truncated or corrupt gzip stream ({error})"
                ) from error
            if not block:
                break
            buffer = carry + block
            cut = buffer.rfind(boundary)
            if cut <= 0:
                carry = buffer
                continue
            chunk, carry = buffer[: cut + 1], buffer[cut + 1 :]
            yield line, chunk
            line += chunk.count(b"\n")
    if carry:
        yield line, carry


def check_text(path: str | os.PathLike, first_line: int, chunk: bytes) -> None:
    """Reject binary input (a NUL byte in the first 64 KiB) before parsing: a compressed archive or
    an image passed by mistake would otherwise surface as a confusing parse error."""
    nul = chunk.find(b"\x00", 0, _SNIFF_BYTES)
    if nul >= 0:
        raise InputFormatError(path, first_line + chunk.count(b"\n", 0, nul), _BINARY_TEXT)
    if chunk.startswith(b"\xef\xbb\xbf"):
        raise InputFormatError(
            path,
            first_line,
            "starts with a UTF-8 byte-order mark (BOM); remove it, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' FILE",
        )
    sniff = chunk[:_SNIFF_BYTES]
    if b"\r" in sniff and b"\n" not in sniff:
        raise InputFormatError(
            path,
            first_line,
            "uses CR-only line endings (classic Mac OS); convert them to LF, e.g. tr '\\r' '\\n' < FILE > FILE.unix",
        )


def _header_id(header: bytes, line: int) -> str:
    try:
        header.decode("utf-8")
    except UnicodeDecodeError:
        raise ChunkError(ChunkProblem(BAD_UTF8, line))
    words = header.split(maxsplit=1)  # ASCII whitespace only, as in the C++ parser
    if not words:
        raise ChunkError(ChunkProblem(EMPTY_ID, line))
    return words[0].decode("utf-8")


def split_fasta_records(chunk: bytes) -> Iterator[tuple[int, str, bytes]]:
    """Reference parser: ``(header line in chunk, record id, residues)`` per record.

    Residues are the sequence lines joined with surrounding whitespace removed; case
    and stop codons are left for the encoder. Raises :class:`ChunkError`.
    """
    record_id: str | None = None
    header_line = 0
    pieces: list[bytes] = []
    lines = chunk.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines):
        if b"\x00" in line:
            raise ChunkError(ChunkProblem(BINARY, number, record_id))
        if line[:1] == b">":
            if record_id is not None:
                if not pieces:
                    raise ChunkError(ChunkProblem(NO_SEQUENCE, header_line, record_id))
                yield header_line, record_id, b"".join(pieces)
            record_id = _header_id(line[1:], number)
            header_line = number
            pieces = []
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if record_id is None:
            raise ChunkError(ChunkProblem(BEFORE_HEADER, number, None))
        pieces.append(stripped)
    if record_id is not None:
        if not pieces:
            raise ChunkError(ChunkProblem(NO_SEQUENCE, header_line, record_id))
        yield header_line, record_id, b"".join(pieces)


@dataclass(frozen=True)
class SequenceRecord:
    record_id: str
    """First word of the FASTA header (or the JSONL id field)."""
    sequence: bytes
    """Residue letters as read (case and trailing ``*`` untouched); the tokenizer normalises."""
    line: int
    """1-based line of the header (FASTA) or of the JSON object (JSONL)."""


def read_fasta(path: str | os.PathLike) -> Iterator[SequenceRecord]:
    """Yield the records of a FASTA file in order; raises :class:`InputFormatError` on bad input."""
    saw_any = False
    for first_line, chunk in iter_chunks(path):
        if first_line == 1:
            check_text(path, first_line, chunk)
        try:
            for line, record_id, residues in split_fasta_records(chunk):
                saw_any = True
                yield SequenceRecord(record_id, residues, first_line + line)
        except ChunkError as error:
            raise problem_to_error(error.problem, path, first_line) from None
    if not saw_any:
        raise InputFormatError(path, None, "empty input: no FASTA records")


def parse_jsonl_line(
    line: bytes, number: int, path: str | os.PathLike, *, sequence_key: str, id_key: str | None
) -> tuple[str, bytes]:
    """One JSONL line -> (record id, sequence bytes); raises :class:`InputFormatError`."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise InputFormatError(path, number, f"invalid UTF-8 ({error.reason} at byte {error.start + 1})")
    except json.JSONDecodeError as error:
        raise InputFormatError(path, number, f"malformed JSON ({error.msg} at column {error.colno})")
    if not isinstance(obj, dict):
        raise InputFormatError(path, number, f"expected a JSON object, got {type(obj).__name__}")
    if id_key and id_key in obj:
        value = obj[id_key]
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise InputFormatError(
                path, number, f"field {id_key!r} must be a non-empty string or an integer, got {json.dumps(value)[:60]}"
            )
        record_id = str(value)
    else:
        record_id = f"line{number}"
    if "\n" in record_id or "\r" in record_id:  # ids.txt holds one id per line: it would shift every later id
        raise InputFormatError(path, number, f"field {id_key!r} contains a line break: {record_id[:60]!r}")
    if sequence_key not in obj:
        raise InputFormatError(path, number, f"missing field {sequence_key!r}", record_id)
    sequence = obj[sequence_key]
    if not isinstance(sequence, str):
        raise InputFormatError(
            path, number, f"field {sequence_key!r} must be a string, got {type(sequence).__name__}", record_id
        )
    if not sequence:
        raise InputFormatError(path, number, f"field {sequence_key!r} is empty", record_id)
    return record_id, sequence.encode("utf-8")
