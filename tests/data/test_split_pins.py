"""Splits must not move: assignments pinned from the per-name hashing loop that preceded the vectorised one."""

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_plm.data.corpus import Corpus
from megatron_plm.data.samples.splits import assign_splits

PINS = json.loads((Path(__file__).parent / "split_pins.json").read_text())


@pytest.mark.parametrize("mode", ["by_cluster", "by_residues"])
def test_split_assignments_are_pinned(sample_corpus, mode):
    corpus = Corpus.open(sample_corpus)
    splits = assign_splits(corpus, tuple(PINS["weights"]), by_cluster=mode == "by_cluster")
    assert np.bincount(splits, minlength=3).tolist() == PINS[mode]["counts"]
    position = {name: i for i, name in enumerate(corpus.record_ids())}
    got = "".join(str(int(splits[position[name]])) for name in PINS[mode]["record_ids"])
    assert got == PINS[mode]["splits"]
    assert len(set(got)) == 3  # the pins cover all three splits
