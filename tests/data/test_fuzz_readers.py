"""Property-based fuzzing of the FASTA/JSONL readers and the C++ encoder.

For every generated input: the C++ and Python encoders agree exactly, and ``preprocess`` either
writes a corpus that reads back as the input's records or raises an ``InputFormatError`` that
starts with ``FILE:LINE`` and leaves nothing at the output prefix. CI runs a few seconds of
examples; ``benchmarks/fuzz_readers.py`` runs the same properties for longer.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.preprocess.encode import (
    Unknown,
    _encode_fasta_chunk_native,
    encode_fasta_chunk_reference,
    native_available,
)
from megatron_plm.data.preprocess.fasta import InputFormatError
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
from megatron_plm.data.tokenizers.protein import STANDARD_AMINO_ACIDS, ProteinTokenizer

settings.register_profile("ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 20_000)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("FUZZ_PROFILE", "ci"))  # benchmarks/fuzz_readers.py sets "long"

TOK = ProteinTokenizer()
IMPLEMENTATIONS = ["reference"] + (["native"] if native_available() else [])

residues = st.text(alphabet=STANDARD_AMINO_ACIDS + STANDARD_AMINO_ACIDS.lower(), min_size=1, max_size=300)
record_ids = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters=">"), min_size=1, max_size=20
)
# Bytes that messy FASTA files contain, so random inputs reach the parser's corners.
fasta_bytes = st.lists(
    st.sampled_from(
        [
            b">",
            b"\n",
            b"\r\n",
            b"\r",
            b" ",
            b"\t",
            b"*",
            b"M",
            b"k",
            b"J",
            b"1",
            b"\x00",
            b"\xff",
            "é".encode(),
            b">id\n",
            b"\n>",
            b"ACDE",
            b"\xef\xbb\xbf",
        ]
    ),
    max_size=60,
).map(b"".join)


def run_preprocess(content: bytes, suffix: str, implementation: str):
    """(records read back, or the error); asserts a failure leaves nothing at the prefix."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(content)
        prefix = Path(tmp) / "out" / "corpus"
        try:
            preprocess(
                PreprocessConfig(
                    inputs=[str(path)],
                    output_prefix=str(prefix),
                    implementation=implementation,
                    progress=False,
                    chunk_bytes=1024,
                )
            )
        except InputFormatError as error:
            assert str(error).startswith(f"{path}:" if error.line else f"{path}"), str(error)
            assert not (prefix.parent.exists() and list(prefix.parent.iterdir())), "a failed run left files"
            return None, error
        corpus = Corpus.open(prefix)
        dataset = corpus.indexed_dataset()
        return [(i, bytes(np.asarray(dataset[n]))) for n, i in enumerate(corpus.record_ids())], None


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@given(
    records=st.lists(
        st.tuples(record_ids, residues, st.integers(1, 80), st.sampled_from(["\n", "\r\n"]), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_wellformed_fasta_round_trips(implementation, records):
    text = ""
    for record_id, sequence, width, newline, stop in records:
        body = sequence + ("*" if stop else "")
        text += f">{record_id} description{newline}" + "".join(
            body[i : i + width] + newline for i in range(0, len(body), width)
        )
    read, error = run_preprocess(text.encode(), ".fasta", implementation)
    assert error is None, error
    assert read == [(rid, TOK.encode(seq).tobytes()) for rid, seq, *_ in records]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@given(content=fasta_bytes)
def test_arbitrary_fasta_bytes_are_read_or_refused_with_file_and_line(implementation, content):
    read, error = run_preprocess(content, ".fasta", implementation)
    assert (read is None) != (error is None)


@pytest.mark.skipif(not native_available(), reason="C++ extension not built")
@given(content=fasta_bytes)
def test_cpp_and_python_encoders_agree(content):
    for unknown in Unknown:
        want = encode_fasta_chunk_reference(content, TOK.byte_lookup, unknown, TOK.unk)
        got = _encode_fasta_chunk_native(content, TOK.byte_lookup, unknown, TOK.unk)
        assert got.problem == want.problem
        assert got.ids == want.ids
        assert np.array_equal(got.tokens, want.tokens) and np.array_equal(got.lengths, want.lengths)
        assert np.array_equal(got.status, want.status)


json_values = st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False))


@given(
    rows=st.lists(
        st.one_of(
            st.fixed_dictionaries({"id": st.one_of(st.text(max_size=20), st.integers()), "sequence": residues}),
            st.dictionaries(st.sampled_from(["id", "sequence", "other"]), json_values, max_size=3),
            st.text(max_size=30).map(lambda t: {"raw": t}),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_jsonl_rows_round_trip_or_are_refused_with_file_and_line(rows):
    lines = [row["raw"].replace("\n", " ") if set(row) == {"raw"} else json.dumps(row) for row in rows]
    read, error = run_preprocess(("\n".join(lines) + "\n").encode(), ".jsonl", "reference")
    if error is None:
        kept = [(n, json.loads(line)) for n, line in enumerate(lines, start=1) if line.strip()]
        assert read == [
            (str(r["id"]) if "id" in r else f"line{n}", TOK.encode(r["sequence"]).tobytes()) for n, r in kept
        ]
