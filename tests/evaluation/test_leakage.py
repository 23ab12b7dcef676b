"""Leakage report: each assay protein searched (real MMseqs2) against a real preprocessed corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_plm.data.preprocess.fasta import read_fasta
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
from megatron_plm.evaluation.leakage import LEVELS, corpus_records, leakage_cells, leakage_report

REPO = Path(__file__).resolve().parents[2]
TEM1_MSA = REPO / "data/family/BLAT_ECOLX_ColabFold_2202.a3m"
QUERY = REPO / "data/corpus/uniprotkb_mmseqs2_example_QUERY.fasta"


@pytest.fixture(scope="module")
def tem1_corpus(tmp_path_factory) -> str:
    """81 TEM-1 alignment records (the wild type itself first) and 100 unrelated UniProtKB proteins, preprocessed."""
    folder = tmp_path_factory.mktemp("leak")
    (folder / "tem1.a3m").write_text("".join(TEM1_MSA.read_text().splitlines(keepends=True)[:162]))
    (folder / "other.fasta").write_text(
        "".join(f">{r.record_id}\n{r.sequence.decode()}\n" for r in list(read_fasta(QUERY))[:100])
    )
    prefix = str(folder / "corpus")
    preprocess(
        PreprocessConfig(
            inputs=[str(folder / "tem1.a3m"), str(folder / "other.fasta")], output_prefix=prefix, progress=False
        )
    )
    return prefix


def test_corpus_is_read_back_as_its_residues(tem1_corpus):
    records = list(corpus_records(tem1_corpus))
    assert len(records) == 181 and records[0][0] == "101"
    originals = {r.record_id: r.sequence.upper() for r in read_fasta(QUERY)}
    assert all(residues == originals[rid] for rid, residues in records[81:])


def test_wild_type_in_the_corpus_is_flagged_and_an_absent_one_is_not(tem1_corpus):
    wild_types = {r.record_id: r.sequence.decode() for r in read_fasta(REPO / "data/dms/wildtype.fasta")}
    targets = [(name, wild_types[name]) for name in ("BLAT_ECOLX_Stiffler_2015", "IF1_ECOLI_Kelsic_2016")]
    report = leakage_report(targets, tem1_corpus, threads=1, log=None)
    blat, if1 = report["BLAT_ECOLX_Stiffler_2015"], report["IF1_ECOLI_Kelsic_2016"]
    assert blat.nearest_identity == 1.0 and blat.contaminated
    counts = [blat.homologs[level] for level in LEVELS]
    assert counts == sorted(counts, reverse=True) and 1 <= counts[-1] and counts[0] >= 60
    assert if1.nearest_identity is None and not if1.contaminated and set(if1.homologs.values()) == {0}
    assert leakage_cells(blat)[0] == "1.00" and leakage_cells(blat)[-1] == "LEAK"
    assert leakage_cells(if1) == ["<0.30", "0", "0", "0", "ok"]


def test_dms_cli_prints_the_leakage_column(trained, tem1_corpus):
    import subprocess
    import sys

    command = [sys.executable, "-m", "megatron_plm", "evaluate", "dms", "--model", str(trained["mlm"]), "--no-progress"]
    command += [
        "--assay",
        "BLAT_ECOLX_Stiffler_2015",
        "--assay",
        "IF1_ECOLI_Kelsic_2016",
        "--train-corpus",
        tem1_corpus,
    ]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.split()}
    assert rows["DMS_id"][-4:] == [">=30%", ">=50%", ">=90%", "leak"]
    assert rows["BLAT_ECOLX_Stiffler_2015"][-5] == "1.00" and rows["BLAT_ECOLX_Stiffler_2015"][-1] == "LEAK"
    assert rows["IF1_ECOLI_Kelsic_2016"][-5:] == ["<0.30", "0", "0", "0", "ok"]


def test_dms_cli_missing_train_corpus_fails_before_scoring(trained, tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "megatron_plm", "evaluate", "dms", "--model", str(trained["mlm"])]
    out = subprocess.run(command + ["--train-corpus", str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "--train-corpus (its .idx)" in out.stderr


def test_perplexity_cli_reports_each_sequences_nearest_training_identity(trained, tem1_corpus, tmp_path):
    import csv
    import subprocess
    import sys

    command = [sys.executable, "-m", "megatron_plm", "evaluate", "perplexity", "--model", str(trained["clm"])]
    command += ["--fasta", str(REPO / "data/dms/wildtype.fasta"), "--train-corpus", tem1_corpus, "--no-progress"]
    out = subprocess.run(command + ["--output", str(tmp_path / "ppl.csv")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "leakage: 1 of 5 scored sequences" in out.stdout
    nearest = {row["record_id"]: row["nearest_train_identity"] for row in csv.DictReader(open(tmp_path / "ppl.csv"))}
    assert nearest.pop("BLAT_ECOLX_Stiffler_2015") == "1.000" and set(nearest.values()) == {""}
