"""The C++ chunk encoder against the Python reference on mutated real records.

Mutations insert what messy files contain (lower case, stop codons, CR, tabs, blank
lines, NUL, stray '>', invalid UTF-8, multi-byte UTF-8 in headers, non-residue letters);
for every unknown-character policy both encoders must return identical tokens, lengths,
statuses, ids and problem.
"""

import numpy as np
import pytest

from megatron_plm.data.preprocess.encode import (
    Unknown,
    _encode_fasta_chunk_native,
    encode_fasta_chunk_reference,
    native_available,
)
from megatron_plm.data.preprocess.fasta import iter_chunks
from megatron_plm.data.tokenizers.protein import ProteinTokenizer

pytestmark = pytest.mark.skipif(not native_available(), reason="C++ extension not built")

MUTATIONS = [
    b"a",
    b"k",
    b"*",
    b"**",
    b"J",
    b"1",
    b"\r",
    b" ",
    b"\t",
    b"\n",
    b"\n\n",
    b"\x00",
    b">",
    b"\n>",
    b"\xff",
    "é".encode(),
    "\u00a0".encode(),
    b"\x0b",
    b"\r\n",
]


def assert_same(chunk: bytes, tokenizer: ProteinTokenizer):
    for unknown in Unknown:
        want = encode_fasta_chunk_reference(chunk, tokenizer.byte_lookup, unknown, tokenizer.unk)
        got = _encode_fasta_chunk_native(chunk, tokenizer.byte_lookup, unknown, tokenizer.unk)
        context = f"unknown={unknown.name} chunk={chunk[:200]!r}"
        assert got.problem == want.problem, context
        assert np.array_equal(got.tokens, want.tokens), context
        assert np.array_equal(got.lengths, want.lengths), context
        assert np.array_equal(got.status, want.status), context
        assert got.ids == want.ids, context


def test_mutated_real_records(real_fasta_bytes):
    tokenizer = ProteinTokenizer()
    source = real_fasta_bytes
    records = [b">" + r for r in source.split(b"\n>")[1:]]
    records[0] = records[0][1:] if records[0].startswith(b">>") else records[0]
    rng = np.random.default_rng(20261124)
    for _ in range(4000):
        picked = [records[i] for i in rng.integers(0, len(records), size=rng.integers(1, 4))]
        chunk = bytearray(b"\n".join(picked) + b"\n")
        for _ in range(rng.integers(0, 4)):
            at = int(rng.integers(0, len(chunk) + 1))
            chunk[at:at] = MUTATIONS[rng.integers(0, len(MUTATIONS))]
        assert_same(bytes(chunk), tokenizer)


@pytest.mark.parametrize(
    "chunk",
    [
        b"",
        b"\n",
        b">a\n",
        b">a\nMK",
        b">a\r\nMK\r\n\r\n>b\r\nL\r\n",
        b"> a b\n  mk  \n",
        b">a\n*\n",
        b">a\nMK*\n*\n",
        b">a\nM*K\n",
        b">a\nMJ*K\n",
        b">a\n*J\n",
        b"MK\n>a\nM\n",
        b">a\n\x00\n",
        b">\xc3\xa9x y\nM\n",
        b">\xed\xa0\x80\nM\n",
        b">\xf4\x90\x80\x80\nM\n",
        b">\xe0\x80\x80\nM\n",
        b">\xc3\nM\n",
        b">a\x1cb\nM\n",
    ],
)
def test_edge_cases(chunk):
    assert_same(chunk, ProteinTokenizer())


def test_chunk_size_does_not_change_the_result(sample_fasta):
    tokenizer = ProteinTokenizer()
    path = sample_fasta

    def encode_all(chunk_bytes):
        parts = [
            _encode_fasta_chunk_native(c, tokenizer.byte_lookup, Unknown.ERROR, tokenizer.unk)
            for _, c in iter_chunks(path, chunk_bytes=chunk_bytes)
        ]
        return np.concatenate([p.tokens for p in parts]), b"".join(p.ids for p in parts)

    small, large = encode_all(4096), encode_all(64 << 20)
    assert np.array_equal(small[0], large[0]) and small[1] == large[1]
