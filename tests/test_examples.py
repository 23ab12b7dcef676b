"""The example scripts as a reader runs them: from a fresh clone, and again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_family_prepare_runs_twice(tmp_path):
    """``examples/family/run.sh prepare`` rebuilds its corpora on a second run instead of stopping at the
    first corpus that exists; it reads the TEM-1 alignment shipped in ``data/``."""
    work = tmp_path / "checkout"  # links to the checkout, so outputs/ lands here
    work.mkdir()
    for name in ("examples", "data", "megatron_plm", "tools"):
        (work / name).symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if k != "MEGATRON_PLM_SHARED_DATA"}
    env.update(PYTHON=sys.executable, OPENBLAS_NUM_THREADS="1")
    for attempt in (1, 2):
        done = subprocess.run(
            ["bash", "examples/family/run.sh", "prepare"], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"run {attempt}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    family = work / "outputs" / "family"
    written = {p.name for p in family.iterdir()}
    assert {"blat.idx", "blat_w.idx", "blat_w.cluster.npy", "blat80.clusters.tsv", "blat_crop_w.idx"} <= written
    assert "source 'blat': 4,501 documents, 1,207,076 residues" in done.stdout  # the homologs (its README's figures)
    # the corpus cut to TEM-1's covered region (clm-cropped trains on it)
    assert "cropped to the target's residues 17-282 of 286" in done.stdout
    assert "source 'blat': 4,501 documents, 1,162,416 residues" in done.stdout
