"""Shared fixtures: where the real data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_fasta() -> Path:
    """The sample shipped in the repo (10k UniRef90 sequences)."""
    return SAMPLE_DIR / "uniref90_esm2_pretraining_sample_10k.fasta.gz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared real data (../shared/data beside the checkout, as in CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
