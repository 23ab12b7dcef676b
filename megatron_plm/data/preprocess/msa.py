"""Multiple sequence alignments as inputs: a3m, a2m and aligned FASTA.

Family-level training (ProGen2 family fine-tuning, UniRep evotuning, EVE) starts from the
alignment a homology search wrote. For the language model an aligned row is just a homolog:
gaps are dropped and insertions upper-cased, giving the full aligned segment. For profiles and
sequence weights the *match columns* matter instead:

- a3m (HH-suite, ColabFold): upper case and ``-`` are match columns, lower case insertions;
- a2m: as a3m, with ``.`` filling insert columns of other rows;
- aligned FASTA (``afa``): every column is a match column and all rows have equal length.

Whole alignments are read into memory: they are megabytes, not the gigabytes of a corpus.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from megatron_plm.data.preprocess.fasta import InputFormatError, check_text, open_binary
from megatron_plm.data.tokenizers.protein import RESIDUES

MSA_FORMATS = ("a3m", "a2m", "afa")
MSA_SUFFIXES = {".a3m": "a3m", ".a2m": "a2m", ".afa": "afa", ".aln.fasta": "afa", ".afasta": "afa"}
_GAPS = b"-."
_ALLOWED = (RESIDUES + RESIDUES.lower()).encode() + _GAPS


def msa_format_of(path: str) -> str | None:
    """The MSA format a file name implies (``.gz`` ignored), or None."""
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, fmt in MSA_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


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
    read_msa(path, fmt)  # shape errors name the record
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
        bad = line.translate(None, _ALLOWED)
        if bad:  # as preprocess would refuse it: a '#' is not a gap
            raise InputFormatError(  # the record's header line, as preprocess names it
                path,
                header_lines[-1],
                f"invalid residue {chr(bad[0])!r} (line {number}; an aligned row holds residues, '-' and '.')",
                ids[-1],
            )
        pieces.append(line)
    if not ids:
        raise InputFormatError(path, None, "empty input: no alignment records")
    finish()

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
    return Alignment(ids=ids, columns=columns.copy())
