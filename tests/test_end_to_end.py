"""The README's main job through the real CLI: preprocess the shipped sample, train on the corpus."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _cli(*args, cwd=REPO):
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_preprocess_then_train_matches_training_from_fasta(tmp_path, sample_fasta):
    clusters = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    printed = _cli("tools/preprocess_data.py", "--input", str(sample_fasta), "--output-prefix",
                   str(tmp_path / "corpus"), "--source-label", "uniref90", "--clusters", clusters, "--workers", "2")  # fmt: skip
    assert "documents written  10,000" in printed and "residues written   3,353,645" in printed

    common = ["--steps", "4", "--seq-length", "64", "--seed", "3"]
    _cli("-m", "megatron_plm", "smoke", "--data-prefix", str(tmp_path / "corpus"), *common,
         "--metrics-json", str(tmp_path / "corpus.json"))  # fmt: skip
    _cli("-m", "megatron_plm", "smoke", "--fasta", str(sample_fasta), *common,
         "--metrics-json", str(tmp_path / "fasta.json"))  # fmt: skip
    from_corpus = json.loads((tmp_path / "corpus.json").read_text())["steps"]
    from_fasta = json.loads((tmp_path / "fasta.json").read_text())["steps"]
    assert [s["loss"] for s in from_corpus] == [s["loss"] for s in from_fasta]
    assert from_corpus[-1]["loss"] < from_corpus[0]["loss"]
