"""The input files of an offline step: patterns expanded, source labels given, each file's format decided.

Shared by ``preprocess``, ``cluster`` and ``decontaminate`` so that all three read the same files under the same
names and formats (and so record ids match across them)."""

from __future__ import annotations

import glob
import os

from megatron_plm.data.preprocess.fasta import InputFormatError
from megatron_plm.data.preprocess.msa import detect_format as detect_input_format

_SUFFIXES = (".gz", ".fasta", ".fa", ".faa", ".fas", ".fna", ".jsonl", ".json", ".txt", ".a3m", ".a2m", ".afa")


def default_label(path: str) -> str:
    """A file's source label when none is given: its name without the suffixes we read."""
    name = os.path.basename(path)
    while name.endswith(_SUFFIXES):
        name = name[: name.rindex(".")]
    return name


def resolve_inputs(patterns: list[str], labels: list[str]) -> list[tuple[str, str]]:
    """``(path, source label)`` per file, patterns expanded in sorted order, in the given order."""
    resolved = []
    for position, pattern in enumerate(patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matched no file")
        for path in matches:
            if os.path.isdir(path):
                raise InputFormatError(path, None, "is a directory; give its files, e.g. --input 'DIR/*.fasta.gz'")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"input file {path} does not exist")
            label = labels[position] if len(labels) > 1 else labels[0] if labels else default_label(path)
            resolved.append((path, label))
    return resolved


def detect_format(path: str, configured: str) -> str:
    """By name, then content (one detection with ``msa-weights``: :func:`~megatron_plm.data.preprocess.msa.detect_format`)."""
    return detect_input_format(path, configured)
