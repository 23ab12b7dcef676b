"""Every bad input gets an error naming the file, the line and (where there is one) the record,
from both encoders, and leaves nothing at the output prefix."""

import gzip
import json

import pytest

from megatron_plm.data.preprocess.encode import native_available
from megatron_plm.data.preprocess.fasta import InputFormatError
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

IMPLEMENTATIONS = [
    "reference",
    pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="C++ extension not built")),
]

GOOD = b">sp|P1|A first\nMKTAYIAK\nQRQISFVK\n>sp|P2|B second\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n"

# name -> (file bytes, suffix, expected line, expected record or None, text in the message)
CASES = {
    "empty_file": (b"", ".fasta", None, None, "empty input"),
    "blank_lines_only": (b"\n\n  \n", ".fasta", None, None, "empty input"),
    "sequence_before_header": (b"MKTAYIAK\n>sp|P1|A\nMKT\n", ".fasta", 1, None, "before the first '>' header"),
    "header_without_sequence": (b">sp|P1|A\nMKT\n>sp|P2|B\n>sp|P3|C\nMKT\n", ".fasta", 3, "sp|P2|B", "no sequence"),
    "last_header_without_sequence": (GOOD + b">sp|P3|C desc\n", ".fasta", 6, "sp|P3|C", "no sequence"),
    "stop_codon_only": (b">sp|P1|A\n*\n", ".fasta", 1, "sp|P1|A", "no sequence"),
    "invalid_character": (
        GOOD + b">sp|P3|C\nMKT\nAAJAA\n",
        ".fasta",
        6,
        "sp|P3|C",
        "invalid residue 'J' at position 6",
    ),
    "internal_stop_codon": (b">sp|P1|A\nMK*TA*\n", ".fasta", 1, "sp|P1|A", "invalid residue '*' at position 3"),
    "binary_garbage": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ".fasta", 3, None, "binary data"),
    "nul_inside_record": (GOOD + b">sp|P3|C\nMK\x00T\n", ".fasta", 7, "sp|P3|C", "binary data"),
    "invalid_utf8_header": (GOOD + b">sp|P3|\xff\xfe bad\nMKT\n", ".fasta", 6, None, "not valid UTF-8"),
    "empty_header": (GOOD + b">\nMKT\n", ".fasta", 6, None, "empty FASTA header"),
    "malformed_json": (
        b'{"id": "a", "sequence": "MKT"}\n{"id": "b", "sequence": \n',
        ".jsonl",
        2,
        None,
        "malformed JSON",
    ),
    "missing_field": (
        b'{"id": "a", "sequence": "MKT"}\n{"id": "b", "seq": "MKT"}\n',
        ".jsonl",
        2,
        "b",
        "missing field 'sequence'",
    ),
    "json_not_object": (b'["MKT"]\n', ".jsonl", 1, None, "expected a JSON object"),
    "json_invalid_utf8": (b'{"id": "a", "sequence": "MK\xff"}\n', ".jsonl", 1, None, "invalid UTF-8"),
    "json_invalid_residue": (
        b'{"id": "a", "sequence": "MKT"}\n{"id": "b", "sequence": "MKB1"}\n',
        ".jsonl",
        2,
        "b",
        "invalid residue '1' at position 4",
    ),
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_file_line_and_record(tmp_path, case, implementation):
    content, suffix, line, record, text = CASES[case]
    path = tmp_path / f"{case}{suffix}"
    path.write_bytes(content)
    prefix = tmp_path / "out" / "corpus"
    cfg = PreprocessConfig(
        inputs=[str(path)], output_prefix=str(prefix), implementation=implementation, progress=False, chunk_bytes=1024
    )
    with pytest.raises(InputFormatError) as caught:
        preprocess(cfg)
    error = caught.value
    assert error.path == str(path)
    assert error.line == line
    assert error.record == record
    assert text in str(error)
    assert str(error).startswith(f"{path}:{line}" if line else str(path))
    assert not any((tmp_path / "out").iterdir()), "a failed run left files behind"


def test_truncated_gzip_names_the_file(tmp_path, real_fasta_bytes):
    data = real_fasta_bytes
    compressed = gzip.compress(data)
    path = tmp_path / "truncated.fasta.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(InputFormatError, match=r"truncated\.fasta\.gz:\d+: truncated or corrupt gzip"):
        preprocess(PreprocessConfig(inputs=[str(path)], output_prefix=str(tmp_path / "o"), progress=False))
    assert not list(tmp_path.glob("o*"))


def test_skip_and_unk_policies_count_records(tmp_path):
    path = tmp_path / "mixed.fasta"
    path.write_bytes(GOOD + b">sp|P3|C\nMKJT\n>sp|P4|D\nmkty*\n")
    for policy, documents, skipped, unk in (("skip", 3, 1, 0), ("unk", 4, 0, 1)):
        prefix = tmp_path / policy
        summary, _ = preprocess(
            PreprocessConfig(inputs=[str(path)], output_prefix=str(prefix), unknown=policy, progress=False)
        )
        assert summary.documents_written == documents
        assert summary.skipped["invalid_character"] == skipped
        assert summary.records_with_unk == unk
        meta = json.loads((tmp_path / f"{policy}.meta.json").read_text())
        assert meta["summary"]["skipped"]["invalid_character"] == skipped


def test_failure_on_a_later_input_keeps_the_previous_corpus(tmp_path, sample_fasta):
    prefix = tmp_path / "corpus"
    preprocess(PreprocessConfig(inputs=[str(sample_fasta)], output_prefix=str(prefix), progress=False))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = tmp_path / "bad.fasta"
    bad.write_bytes(b">x\nMKJ\n")
    with pytest.raises(InputFormatError):
        preprocess(
            PreprocessConfig(
                inputs=[str(sample_fasta), str(bad)], output_prefix=str(prefix), progress=False, overwrite=True
            )
        )
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "bad.fasta"}
    assert after == before
