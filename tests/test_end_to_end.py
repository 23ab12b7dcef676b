"""The README's main job through the real CLI: preprocess the shipped sample, train a tiny CLM,
then a tiny MLM from the CLM's body, with checkpoints and validation perplexity."""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def _cli(*args):
    out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_preprocess_then_clm_then_mlm_from_the_clm_body(tmp_path, sample_fasta):
    clusters = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    corpus = tmp_path / "corpus"
    printed = _cli(
        "tools/preprocess_data.py",
        "--input",
        str(sample_fasta),
        "--output-prefix",
        str(corpus),
        "--source-label",
        "uniref90",
        "--clusters",
        clusters,
        "--workers",
        "2",
    )
    assert "documents written  10,000" in printed and "residues written   3,353,645" in printed

    common = [f"data.sources=[{{prefix: {corpus}}}]", "training.train_iters=20", "training.eval_interval=10"]
    clm = _cli(
        "-m",
        "megatron_plm",
        "train",
        "--config",
        "examples/configs/tiny_clm.yaml",
        *common,
        f"checkpoint.save={tmp_path / 'clm'}",
        "checkpoint.save_interval=10",
    )
    mlm = _cli(
        "-m",
        "megatron_plm",
        "train",
        "--config",
        "examples/configs/tiny_mlm.yaml",
        *common,
        f"checkpoint.save={tmp_path / 'mlm'}",
        f"checkpoint.init_from={tmp_path / 'clm'}",
        f"logging.metrics_file={tmp_path / 'mlm.jsonl'}",
    )

    assert (tmp_path / "clm/latest").read_text().strip() == "iter_0000020"
    assert sorted(p.name for p in (tmp_path / "clm").glob("iter_*")) == ["iter_0000010", "iter_0000020"]
    for printed in (clm, mlm):
        perplexities = [
            float(x) for x in re.findall(r"validation at step \d+: loss [\d.]+, perplexity ([\d.]+)", printed)
        ]
        assert len(perplexities) == 2 and perplexities[-1] < 25.0  # from ~64 (uniform) at the start
    transferred = re.search(r"initialised the body from \S+: (\d+) tensors", mlm)
    assert transferred and int(transferred.group(1)) > 10
    # Equal steps of the same model: the CLM phase is half of the compute, reported per phase.
    assert re.search(
        r"compute: tiny-clm \(clm\) 40,960 tokens, [\d.e+]+ FLOPs = 50%; tiny-mlm \(mlm\) 40,960 tokens", mlm
    )
    lines = [json.loads(line) for line in (tmp_path / "mlm.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == list(range(1, 21))
