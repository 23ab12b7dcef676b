"""The target in a family alignment, and the family cut to the region of it that the family covers
(``preprocess --crop-to-target``): hand-made rows, then the real TEM-1 alignments."""

import re

import numpy as np
import pytest

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.preprocess.msa import Alignment, read_msa
from megatron_plm.data.preprocess.msa_target import crop_rows, read_target
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
from megatron_plm.data.tokenizers.protein import ProteinTokenizer

FAMILY = "family/BLAT_ECOLX_ColabFold_2202.a3m"

# Eight match columns. hom1: a deletion at column 2, insertions 'ay' after it and 'ww' after column 3;
# hom2: two leading gaps and an insertion after the last column.
A3M = b""">query
MKTAYIAK
>hom1
MK-ayIwwAKQR
>hom2
--TAYIAKg
>hom3
MK------
"""


def _alignment(tmp_path, text=A3M, fmt="a3m"):
    path = tmp_path / f"family.{fmt}"
    path.write_bytes(text)
    return path, read_msa(path, fmt)


def test_crop_keeps_the_insertions_between_the_region_s_columns(tmp_path):
    _, alignment = _alignment(tmp_path)
    assert crop_rows(alignment, "a3m", 2, 4) == [b"TAY", b"AYIWWA", b"TAY", b""]
    # Insertions after the last column (hom1's 'ww' after 3, hom2's 'g' after 7) lie outside.
    assert crop_rows(alignment, "a3m", 3, 3) == [b"A", b"I", b"A", b""]
    assert crop_rows(alignment, "a3m", 0, 7) == [b"MKTAYIAK", b"MKAYIWWAKQR", b"TAYIAK", b"MK"]
    # Aligned FASTA: every column is a match column, '.' a gap like '-'.
    afa = Alignment(ids=["a", "b"], columns=np.zeros((2, 5), np.uint8), rows=[b"MKTAY", b"M.-AY"])
    assert crop_rows(afa, "afa", 1, 3) == [b"KTA", b"A"]


def _corpus(prefix):
    opened = Corpus.open(prefix)
    tokenizer = ProteinTokenizer()
    return dict(zip(opened.record_ids(), (tokenizer.decode(s) for s in opened.indexed_dataset())))


def _preprocess(path, prefix, **options):
    summary, _ = preprocess(
        PreprocessConfig(inputs=[str(path)], output_prefix=str(prefix), progress=False, overwrite=True, **options)
    )
    return summary, _corpus(prefix)


def test_preprocess_crops_the_colabfold_family_to_tem1_s_covered_region(shared_data, tmp_path):
    """TEM-1 leads the a3m; its residues 17-282 have residues in >= 70% of the rows (the signal peptide's
    start and the last four do not): each homolog keeps what aligns there, and says so."""
    a3m = shared_data / FAMILY
    tem1 = read_target(str(shared_data / "dms/wildtype.fasta"), "BLAT_ECOLX_Stiffler_2015")
    whole_summary, whole = _preprocess(a3m, tmp_path / "whole")
    summary, cropped = _preprocess(a3m, tmp_path / "cropped", crop_to_target=tem1)
    (note,) = summary.crops
    assert "residues 17-282 of 286" in note and "placed: the first record" in note
    assert cropped["101"] == tem1[16:282]
    assert set(cropped) <= set(whole) and len(cropped) >= 0.95 * len(whole)
    assert all(cropped[name] in whole[name] for name in cropped)
    assert summary.residues_written < whole_summary.residues_written
    dropped, rows = (int(n.replace(",", "")) for n in re.search(r"([\d,]+) of ([\d,]+) rows hold no", note).groups())
    assert rows == whole_summary.documents_written, note
    assert dropped == whole_summary.documents_written - summary.documents_written, note
    meta = Corpus.open(tmp_path / "cropped").meta
    assert meta["settings"]["crop_to_target"] == {"target": tem1, "min_coverage": 0.7}


def test_an_absent_target_is_placed_with_hmmer_and_the_domains_cropped(shared_data, tmp_path):
    """A domain alignment (match columns 41-270 of the real a3m, TEM-1 and every row found in it left out):
    HMMER places TEM-1, and what the domains keep lies inside what they had."""
    alignment = read_msa(shared_data / FAMILY, "a3m")
    tem1 = alignment.query
    keep = [i for i in range(1, 300) if alignment.columns[i, 40:270].tobytes().decode().replace("-", "") not in tem1]
    text = b"".join(b">%s\n%s\n" % (alignment.ids[i].encode(), alignment.columns[i, 40:270].tobytes()) for i in keep)
    path = tmp_path / "domains.a2m"
    path.write_bytes(text)
    summary, cropped = _preprocess(path, tmp_path / "cropped", crop_to_target=tem1, min_coverage=0.9)
    (note,) = summary.crops
    assert "placed: aligned with HMMER" in note, note
    whole = _corpus_of_rows(alignment, keep)
    assert cropped and all(cropped[name] in whole[name] for name in cropped)
    assert sum(map(len, cropped.values())) < sum(map(len, whole.values()))


def _corpus_of_rows(alignment, keep):
    return {alignment.ids[i]: alignment.columns[i, 40:270].tobytes().decode().replace("-", "") for i in keep}


def test_crop_errors_name_the_flag_and_the_file(shared_data, tmp_path):
    a3m = shared_data / FAMILY
    with pytest.raises(ValueError, match="--crop-to-target: neither an existing FASTA file nor a protein sequence"):
        _preprocess(a3m, tmp_path / "x", crop_to_target="tem1.fa")
    fasta = tmp_path / "plain.fasta"
    fasta.write_text(">a\nMKTAYIAK\n")
    with pytest.raises(ValueError, match=r"--crop-to-target crops alignments .* but .*plain.fasta is read as fasta"):
        _preprocess(fasta, tmp_path / "x", crop_to_target="MKTAYIAK")
    path, _ = _alignment(tmp_path)
    unrelated = "MTEYKLVVVGAGGVGKSALTIQLIQNHFVDEYDPTIEDSYRKQVVIDGETCLLDILDTAGQEEYSAMRDQYMRTGEGFLCVFAINNTKSFEDIHQYREQIKRVKDSDDVPMVLVGNKCDL"
    with pytest.raises(ValueError, match=r"not in .*family.a3m's family"):
        _preprocess(path, tmp_path / "x", crop_to_target=unrelated)
    assert not (tmp_path / "x.bin").exists()


def test_a_record_that_is_a_piece_of_the_target_places_it(shared_data):
    """A Pfam-style row ``TEM1/11-286`` (TEM-1 from residue 11, gaps before it) with another protein leading:
    TEM-1 is placed by that record, each residue in the column it came from."""
    from megatron_plm.data.preprocess.msa_target import covered_region, place_target

    alignment = read_msa(shared_data / FAMILY, "a3m")
    tem1 = alignment.query
    piece = b"-" * 10 + alignment.columns[0, 10:].tobytes()
    rows = [alignment.rows[1], *alignment.rows[2:200], piece]
    ids = [alignment.ids[1], *alignment.ids[2:200], "TEM1/11-286"]
    columns = np.array([np.frombuffer(bytes(c for c in r if not 97 <= c <= 122), np.uint8) for r in rows])
    placement = place_target(Alignment(ids=ids, columns=columns, rows=rows), tem1)
    assert placement.how == "found as record TEM1/11-286"
    assert (placement.columns == placement.positions).all() and placement.positions.tolist() == list(range(10, 286))
    region = covered_region(Alignment(ids=ids, columns=columns, rows=rows), placement, 0.7)
    assert region.first_column == region.start and region.last_column == region.end - 1
