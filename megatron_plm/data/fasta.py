"""Streaming FASTA and JSONL readers that name the file, line and record in every error.

Both yield :class:`SequenceRecord` one at a time, so memory stays bounded whatever
the input size. FASTA may be plain or gzip, wrapped or single-line, with CRLF or LF
line ends.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator


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


@dataclass(frozen=True)
class SequenceRecord:
    record_id: str
    """First word of the FASTA header (or the JSONL id field)."""
    sequence: bytes
    """Residue letters as read (case and trailing ``*`` untouched); the tokenizer normalises."""
    line: int
    """1-based line of the header (FASTA) or of the JSON object (JSONL)."""


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """Open plain or gzip input by its magic bytes, not its suffix."""
    handle = open(path, "rb")
    magic = handle.read(2)
    handle.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle, mode="rb")  # type: ignore[return-value]
    return handle


def _lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its line end), turning gzip failures into InputFormatErrors."""
    number = 0
    with open_binary(path) as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                yield number, raw.rstrip(b"\r\n")
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise InputFormatError(path, number + 1, f"truncated or corrupt gzip stream ({error})") from error


def _decode_header(path, number: int, line: bytes) -> str:
    try:
        text = line[1:].decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputFormatError(path, number, f"header is not valid UTF-8 ({error.reason} at byte {error.start + 1})")
    return text.strip()


def _check_binary(path, number: int, line: bytes, record: str | None) -> None:
    if b"\x00" in line:
        raise InputFormatError(path, number, "binary data (NUL byte) in a FASTA file", record)


def read_fasta(path: str | os.PathLike) -> Iterator[SequenceRecord]:
    """Yield the records of a FASTA file in order.

    Raises :class:`InputFormatError` for an empty file, residues before the first
    header, a header with no sequence, binary content, invalid UTF-8 in a header, or a
    truncated gzip stream.
    """
    record_id: str | None = None
    header_line = 0
    chunks: list[bytes] = []
    saw_any = False
    for number, line in _lines(path):
        if line[:1] == b">":
            _check_binary(path, number, line, record_id)
            if record_id is not None:
                if not chunks:
                    raise InputFormatError(path, header_line, "header with no sequence", record_id)
                yield SequenceRecord(record_id, b"".join(chunks), header_line)
            header = _decode_header(path, number, line)
            record_id = header.split(maxsplit=1)[0] if header else ""
            if not record_id:
                raise InputFormatError(path, number, "empty FASTA header ('>' with no id)")
            header_line = number
            chunks = []
            saw_any = True
            continue
        stripped = line.strip()
        if not stripped:
            continue
        _check_binary(path, number, line, record_id)
        if record_id is None:
            raise InputFormatError(path, number, "sequence data before the first '>' header")
        chunks.append(stripped)
    if record_id is not None:
        if not chunks:
            raise InputFormatError(path, header_line, "header with no sequence", record_id)
        yield SequenceRecord(record_id, b"".join(chunks), header_line)
    if not saw_any:
        raise InputFormatError(path, None, "empty input: no FASTA records")


def read_jsonl(
    path: str | os.PathLike, *, sequence_key: str = "sequence", id_key: str | None = "id"
) -> Iterator[SequenceRecord]:
    """Yield one record per JSON object line; ``sequence_key`` must hold a string."""
    saw_any = False
    for number, line in _lines(path):
        if not line.strip():
            continue
        saw_any = True
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise InputFormatError(path, number, f"invalid UTF-8 ({error.reason} at byte {error.start + 1})")
        except json.JSONDecodeError as error:
            raise InputFormatError(path, number, f"malformed JSON ({error.msg} at column {error.colno})")
        if not isinstance(obj, dict):
            raise InputFormatError(path, number, f"expected a JSON object, got {type(obj).__name__}")
        record_id = str(obj.get(id_key, f"line{number}")) if id_key else f"line{number}"
        if sequence_key not in obj:
            raise InputFormatError(path, number, f"missing field {sequence_key!r}", record_id)
        sequence = obj[sequence_key]
        if not isinstance(sequence, str):
            raise InputFormatError(
                path, number, f"field {sequence_key!r} must be a string, got {type(sequence).__name__}", record_id
            )
        if not sequence:
            raise InputFormatError(path, number, f"field {sequence_key!r} is empty", record_id)
        yield SequenceRecord(record_id, sequence.encode("utf-8"), number)
    if not saw_any:
        raise InputFormatError(path, None, "empty input: no JSON lines")
