"""Alignments as preprocessing input (a3m / a2m / aligned FASTA) and homolog reweighting."""

import os

import numpy as np
import pytest

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.preprocess.fasta import InputFormatError, read_fasta
from megatron_plm.data.preprocess.homologs import greedy_clusters, homolog_weights, write_weights
from megatron_plm.data.preprocess.msa import read_msa
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
from megatron_plm.data.tokenizers.protein import ProteinTokenizer

FAMILY = "family/BLAT_ECOLX_ColabFold_2202.a3m"

# Query, then a homolog with a deletion ('-'), two insertions (lower case), wrapped over three
# lines, then one with a leading gap run and a trailing insertion.
A3M = b"""#8\t1
>query description
MKTAYIAK
>hom1\tscore 12
MK-ayIwwAK
QR
>hom2
--TAYIAKg
"""
EXPECTED = {"query": "MKTAYIAK", "hom1": "MKAYIWWAKQR", "hom2": "TAYIAKG"}


def corpus_of(tmp_path, path, **options):
    prefix = tmp_path / "out" / "family"
    preprocess(
        PreprocessConfig(inputs=[str(path)], output_prefix=str(prefix), progress=False, overwrite=True, **options)
    )
    opened = Corpus.open(prefix)
    tok = ProteinTokenizer()
    return dict(zip(opened.record_ids(), (tok.decode(s) for s in opened.indexed_dataset())))


@pytest.mark.parametrize("implementation", ["reference", "auto"])
def test_a3m_gaps_dropped_insertions_upper_cased(tmp_path, implementation):
    path = tmp_path / "tiny.a3m"
    path.write_bytes(A3M)
    assert corpus_of(tmp_path, path, implementation=implementation) == EXPECTED
    alignment = read_msa(path, "a3m")
    assert alignment.ids == ["query", "hom1", "hom2"] and alignment.query == "MKTAYIAK"
    assert [row.tobytes().decode() for row in alignment.columns] == ["MKTAYIAK", "MK-IAKQR", "--TAYIAK"]


def test_a2m_and_aligned_fasta(tmp_path):
    a2m = tmp_path / "tiny.a2m"
    a2m.write_bytes(b">q\nMK..TAY\n>h\nMKggT-Y\n")
    assert corpus_of(tmp_path, a2m) == {"q": "MKTAY", "h": "MKGGTY"}
    assert [r.tobytes() for r in read_msa(a2m, "a2m").columns] == [b"MKTAY", b"MKT-Y"]
    afa = tmp_path / "tiny.afa"
    afa.write_bytes(b">q\nMK-TAY\n>h\nMKW-AY\n")
    assert [r.tobytes() for r in read_msa(afa, "afa").columns] == [b"MK-TAY", b"MKW-AY"]
    os.remove(tmp_path / "out" / "family.bin")
    assert corpus_of(tmp_path, afa) == {"q": "MKTAY", "h": "MKWAY"}


# name -> (file bytes, format, line, record, text)
BAD = {
    "match_columns_differ": (A3M.replace(b"--TAYIAKg", b"-TAYIAKg"), "a3m", 7, "hom2", "7 match columns"),
    "invalid_residue": (A3M.replace(b"QR\n", b"Q1\n"), "a3m", 4, "hom1", "invalid residue '1'"),
    "sequence_before_header": (b"MKT\n>q\nMKT\n", "a3m", 1, None, "before the first '>' header"),
    "header_without_sequence": (b">q\nMKT\n>h\n>g\nMKT\n", "a3m", 3, "h", "no sequence"),
    "rows_of_unequal_length": (b">q\nMK-TAY\n>h\nMKWAY\n", "afa", 3, "h", "5 columns"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_alignment_names_file_line_and_record(tmp_path, case):
    content, fmt, line, record, text = BAD[case]
    path = tmp_path / f"{case}.{fmt}"
    path.write_bytes(content)
    with pytest.raises(InputFormatError) as caught:
        preprocess(PreprocessConfig(inputs=[str(path)], output_prefix=str(tmp_path / "out" / "x"), progress=False))
    assert (caught.value.line, caught.value.record) == (line, record)
    assert str(caught.value).startswith(f"{path}:{line}") and text in str(caught.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_family_alignment_preprocesses_to_its_homologs(tmp_path, shared_data):
    path = shared_data / FAMILY
    sequences = corpus_of(tmp_path, path)
    alignment = read_msa(path, "a3m")
    assert len(alignment.ids) == 4501 and alignment.columns.shape == (4501, 286)
    wild_type = {r.record_id: r.sequence.decode() for r in read_fasta(shared_data / "dms/wildtype.fasta")}
    assert alignment.query == wild_type["BLAT_ECOLX_Stiffler_2015"] == sequences["101"]
    # Independently: every record without '-' and upper-cased (ids repeat: two domains of one protein).
    text = path.read_text().split(">")[1:]
    expected = {}
    for record in text:
        header, *lines = record.splitlines()
        expected.setdefault(header.split()[0], set()).add("".join(lines).replace("-", "").upper())
    assert all(sequences[i] in expected[i] for i in sequences) and set(sequences) == set(expected)


def brute_force_weights(columns: np.ndarray, identity: float) -> np.ndarray:
    rows = [row.tobytes().decode() for row in columns]
    weights = []
    for a in rows:
        residues = sum(c != "-" for c in a)
        neighbours = sum(sum(x == y and x != "-" for x, y in zip(a, b)) >= identity * residues for b in rows)
        weights.append(1 / neighbours)
    return np.array(weights)


@pytest.mark.parametrize("identity", [0.8, 0.5])
def test_weights_match_brute_force(shared_data, identity):
    alignment = read_msa(shared_data / FAMILY, "a3m")
    alignment.columns = alignment.columns[:120]
    alignment.ids = alignment.ids[:120]
    result = homolog_weights(alignment, identity, block=50)  # blocks that do not divide N
    expected = brute_force_weights(alignment.columns, identity)
    assert np.allclose(result.weights, expected, rtol=0, atol=1e-12)
    assert 1 < result.neff < 120 and len(set(np.round(expected, 6))) > 3  # a non-trivial case


def test_clusters_carry_the_weights_into_sampling(tmp_path, shared_data):
    alignment = read_msa(shared_data / FAMILY, "a3m")
    result = homolog_weights(alignment)
    clusters = greedy_clusters(result, alignment.ids)
    files = write_weights(tmp_path / "blat80", alignment.ids, result, clusters)
    # Every member is a neighbour of a sequence in its cluster (a record repeating an id joins the first).
    first = {i: k for k, i in reversed(list(enumerate(alignment.ids)))}
    for k, c in enumerate(clusters):
        if first[alignment.ids[k]] == k:
            assert any(k in result.neighbours[j] for j in np.flatnonzero(clusters == c))
    sizes = np.bincount(clusters)
    # The cluster count tracks Neff (measured: 3,378 with 3,243 clusters): sampling ~ the weights.
    assert abs(len(sizes) - result.neff) / result.neff < 0.1
    corpus = corpus_of(tmp_path, shared_data / FAMILY, clusters=files["clusters"])
    assert len(corpus) == 4500  # one id repeats
    index = Corpus.open(tmp_path / "out" / "family").cluster_index()
    assert len(index) == 4501 and (index >= 0).all() and len(np.unique(index)) == len(sizes)
