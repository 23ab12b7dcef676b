"""Multiple sequence alignments as inputs: a3m, a2m, aligned FASTA and Stockholm.

Family-level training (ProGen2 family fine-tuning, UniRep evotuning, EVE) starts from the
alignment a homology search wrote. For the language model an aligned row is just a homolog:
gaps are dropped and insertions upper-cased, giving the full aligned segment. For profiles and
sequence weights the *match columns* matter instead:

- a3m (HH-suite, ColabFold): upper case and ``-`` are match columns, lower case insertions;
- a2m: as a3m, with ``.`` filling insert columns of other rows;
- aligned FASTA (``afa``): every column is a match column and all rows have equal length;
- Stockholm (``sto``: Pfam, HMMER's hmmalign/jackhmmer ``-A``): the ``#=GC RF`` line marks match
  columns (``x``) and insert columns (``.``); without it, the letters' case does (Pfam's convention).

One detection (:func:`detect_format`) serves ``preprocess`` and ``msa-weights``: the name first, then
the content; a file whose name says FASTA but whose rows hold gaps is refused with a hint naming
``--input-format a2m|afa``, never read as something it may not be.

Whole alignments are read into memory: they are megabytes, not the gigabytes of a corpus.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import numpy as np

from megatron_plm.data.preprocess.fasta import InputFormatError, check_text, open_binary
from megatron_plm.data.tokenizers.protein import RESIDUES

MSA_FORMATS = ("a3m", "a2m", "afa", "sto")
MSA_SUFFIXES = {
    ".a3m": "a3m",
    ".a2m": "a2m",
    ".afa": "afa",
    ".aln.fasta": "afa",
    ".afasta": "afa",
    ".sto": "sto",
    ".stk": "sto",
    ".stockholm": "sto",
}
_SNIFF_BYTES = 1 << 20
"""How much of a file the content detection reads: alignments are small, corpora are not read whole."""
_GAPS = b"-."
_ALLOWED = (RESIDUES + RESIDUES.lower()).encode() + _GAPS


def msa_format_of(path: str) -> str | None:
    """The MSA format a file name implies (``.gz`` ignored), or None."""
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, fmt in MSA_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def detect_format(path: str | os.PathLike, configured: str = "auto", flag: str = "--input-format") -> str:
    """``fasta``, ``jsonl`` or an alignment format (:data:`MSA_FORMATS`) for ``path``.

    ``configured`` other than ``auto`` wins. Otherwise the name (``.gz`` ignored): ``.jsonl``/``.json``,
    an alignment suffix; then the content of the first MiB: ``# STOCKHOLM`` is Stockholm; a FASTA whose
    sequence lines hold ``-`` or ``.`` is an alignment of unknown kind, refused with a hint naming
    ``flag`` (a2m for match columns in upper case and insertions in lower case, afa for equal-length
    rows), since reading it either way or as plain FASTA could silently train on the wrong thing."""
    if configured != "auto":
        return configured
    path = os.fspath(path)
    name = path[:-3] if path.endswith(".gz") else path
    if msa_format_of(path):
        return msa_format_of(path)
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    head, cut = b"", False
    try:
        with open_binary(path) as handle:
            while len(head) < _SNIFF_BYTES and (block := handle.read(min(1 << 16, _SNIFF_BYTES - len(head)))):
                head += block
    except (EOFError, gzip.BadGzipFile, zlib.error):
        cut = True  # a damaged gzip stream: judge what decompressed; the reader names the line where it breaks
    if head.lstrip()[:11].upper() == b"# STOCKHOLM":
        return "sto"
    lines = head.split(b"\n")
    if cut or len(head) == _SNIFF_BYTES:
        lines = lines[:-1]  # the last line may be cut
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line[:1] in (b">", b"#", b";") or not line:
            continue
        gap = next((c for c in b"-." if c in line), None)
        if gap is not None:
            raise InputFormatError(
                path,
                number,
                f"{chr(gap)!r} in a sequence: this looks like an alignment, not plain FASTA; say which kind with "
                f"{flag} a2m (upper case and '-' are match columns, lower case insertions: a3m/a2m, HMMER, "
                f"Pfam) or {flag} afa (aligned FASTA: equal-length rows, every column a match column)",
            )
    return "fasta"


def _lines(path: str | os.PathLike) -> list[bytes]:
    with open_binary(path) as handle:
        data = handle.read()
    check_text(path, 1, data)
    return data.split(b"\n")


def msa_as_fasta(path: str | os.PathLike, fmt: str) -> bytes:
    """The alignment as FASTA of its homologs (gaps dropped, insertions upper-cased), line for line.

    Every input line maps to one output line, so the FASTA encoder's errors (an invalid residue,
    a header with no sequence) name the alignment's own line numbers. The alignment's shape is
    checked first (:func:`read_msa`)."""
    alignment = read_msa(path, fmt)  # shape errors name the record
    if fmt == "sto":  # interleaved blocks: one record per sequence (errors name the Stockholm lines already)
        return b"".join(
            b">%s\n%s\n" % (name.encode(), row.translate(None, _GAPS).upper())
            for name, row in zip(alignment.ids, alignment.rows)
        )
    out = []
    for line in _lines(path):
        if line[:1] == b"#":  # a3m comment (ColabFold writes '#LENGTH\tCOPIES' first)
            line = b""
        out.append(line if line[:1] == b">" else line.translate(None, _GAPS).upper())
    return b"\n".join(out)


@dataclass
class Alignment:
    """Match columns of an alignment: what profiles and sequence weights are computed over."""

    ids: list[str]
    """First header word of each record, in file order (the first is the query)."""
    columns: np.ndarray
    """``[sequences, match columns]`` uint8 letters, upper case, ``-`` for a gap."""
    rows: list[bytes] | None = None
    """Each record's aligned row as read (a2m convention for Stockholm: insertions lower case, ``.``)."""

    @property
    def query(self) -> str:
        """The first record's residues in match columns (gaps dropped)."""
        return self.columns[0].tobytes().decode().replace("-", "")


def read_msa(path: str | os.PathLike, fmt: str) -> Alignment:
    """Read an a3m / a2m / aligned FASTA file into its match columns.

    Raises :class:`InputFormatError` naming the file, line and record for sequence data before the
    first header, a header with no id or no sequence, or a record whose match-column count differs
    from the first record's."""
    if fmt not in MSA_FORMATS:
        raise ValueError(f"unknown alignment format {fmt!r}; expected one of {', '.join(MSA_FORMATS)}")
    if fmt == "sto":
        ids, rows, header_lines = _read_stockholm(path)
    else:
        ids, rows, header_lines = _read_fasta_rows(path)
    return _match_columns(path, fmt, ids, rows, header_lines)


def _check_row(path, line: bytes, number: int, record_line: int, record: str) -> None:
    bad = line.translate(None, _ALLOWED)
    if bad:  # as preprocess would refuse it: a '#' is not a gap
        raise InputFormatError(  # the record's header line, as preprocess names it
            path,
            record_line,
            f"invalid residue {chr(bad[0])!r} (line {number}; an aligned row holds residues, '-' and '.')",
            record,
        )


def _read_stockholm(path) -> tuple[list[str], list[bytes], list[int]]:
    """Stockholm records as a2m rows: ``#=GC RF`` (``x`` match, ``.``/``-`` insert) decides the match
    columns where present; otherwise the rows keep their own case (Pfam writes inserts in lower case)."""
    pieces: dict[str, list[bytes]] = {}
    first_line: dict[str, int] = {}
    reference: list[bytes] = []
    for number, raw in enumerate(_lines(path), start=1):
        line = raw.strip()
        if not line or line == b"//":
            continue
        if line[:1] == b"#":
            words = line.split()
            if len(words) == 3 and words[0] == b"#=GC" and words[1] == b"RF":
                reference.append(words[2])
            continue
        words = line.split()
        if len(words) != 2:
            raise InputFormatError(path, number, "a Stockholm sequence line is '<name> <aligned residues>'")
        name = words[0].decode("utf-8", errors="replace")
        first_line.setdefault(name, number)
        _check_row(path, words[1].replace(b"~", b"-").replace(b"_", b"-"), number, first_line[name], name)
        pieces.setdefault(name, []).append(words[1].replace(b"~", b"-").replace(b"_", b"-"))
    if not pieces:
        raise InputFormatError(path, None, "no Stockholm sequence lines ('<name> <aligned residues>')")
    ids = list(pieces)
    rows = [b"".join(pieces[name]) for name in ids]
    rf = b"".join(reference)
    if rf:
        for name, row in zip(ids, rows):
            if len(row) != len(rf):
                raise InputFormatError(
                    path, first_line[name], f"{len(row)} columns, but the #=GC RF line has {len(rf)}", name
                )
        insert = np.frombuffer(rf, dtype=np.uint8)
        insert = (insert == ord(".")) | (insert == ord("-"))
        converted = []
        for row in rows:
            letters = np.frombuffer(row.upper(), dtype=np.uint8).copy()
            gap = (letters == ord("-")) | (letters == ord("."))
            letters[insert & ~gap] += 32  # lower case
            letters[insert & gap] = ord(".")
            letters[~insert & gap] = ord("-")
            converted.append(letters.tobytes())
        rows = converted
    return ids, rows, [first_line[name] for name in ids]


def _read_fasta_rows(path) -> tuple[list[str], list[bytes], list[int]]:
    ids: list[str] = []
    rows: list[bytes] = []
    header_lines: list[int] = []
    pieces: list[bytes] = []

    def finish() -> None:
        if not pieces:
            raise InputFormatError(path, header_lines[-1], "header with no sequence", ids[-1])
        rows.append(b"".join(pieces))

    for number, raw in enumerate(_lines(path), start=1):
        line = raw.rstrip(b"\r")
        if line[:1] == b">":
            if ids:
                finish()
            words = line[1:].split(maxsplit=1)
            if not words:
                raise InputFormatError(path, number, "empty FASTA header ('>' with no id)")
            ids.append(words[0].decode("utf-8", errors="replace"))
            header_lines.append(number)
            pieces = []
            continue
        line = line.strip()
        if not line or line[:1] == b"#":  # a3m files may start with a '#' comment line
            continue
        if not ids:
            raise InputFormatError(path, number, "sequence data before the first '>' header")
        _check_row(path, line, number, header_lines[-1], ids[-1])
        pieces.append(line)
    if not ids:
        raise InputFormatError(path, None, "empty input: no alignment records")
    finish()
    return ids, rows, header_lines


def _match_columns(path, fmt: str, ids: list[str], rows: list[bytes], header_lines: list[int]) -> Alignment:

    if fmt == "afa":
        matches = [row.upper().replace(b".", b"-") for row in rows]
    else:  # insertions (lower case, '.') are not match columns
        matches = [bytes(c for c in row if not (97 <= c <= 122 or c == 46)) for row in rows]
    width = len(matches[0])
    if width == 0 or not matches[0].strip(b"-"):
        what = "residues" if fmt == "afa" else "match columns (upper case residues; lower case are insertions)"
        raise InputFormatError(path, header_lines[0], f"the first record (the query) has no {what}", ids[0])
    for i, row in enumerate(matches):
        if len(row) != width:
            what = "columns" if fmt == "afa" else "match columns (upper case and '-')"
            raise InputFormatError(
                path, header_lines[i], f"{len(row)} {what}, but the first record has {width}", ids[i]
            )
    columns = np.frombuffer(b"".join(matches), dtype=np.uint8).reshape(len(matches), width)
    return Alignment(ids=ids, columns=columns.copy(), rows=rows)
