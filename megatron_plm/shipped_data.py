"""The real data shipped in the checkout's ``data/``, found from the package, not from the current folder.

``data/`` sits beside the package (``megatron_plm/../data``), where an editable install (``pip install -e .``,
what ``make setup`` does) and a plain checkout both find it; a wheel does not carry it (4.9 MB of data, not
code). ``$MEGATRON_PLM_SHARED_DATA`` points the evaluation data (``dms/``, ``secondary_structure/``,
``family/``, ``corpus/``) at another copy with the same layout, such as a team's shared data folder; the
training sample (:data:`SAMPLE_FASTA`) is always the checkout's own.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MEGATRON_PLM_SHARED_DATA"
"""Environment variable: a folder laid out like ``data/`` that replaces it for :func:`data_path`."""

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
"""The checkout's ``data/`` folder."""

SAMPLE_FASTA = REPO_DATA / "uniref90_esm2_pretraining_sample_10k.fasta.gz"
"""The 10,000 UniRef90 sequences the quick start trains on."""

DMS_ASSAYS = "dms"
SECONDARY_STRUCTURE = "secondary_structure/porter6_train_sample_2000_dssp8.tsv.gz"
TEM1_ALIGNMENT = "family/BLAT_ECOLX_ColabFold_2202.a3m"
UNIPROT_QUERY = "corpus/uniprotkb_mmseqs2_example_QUERY.fasta"


def data_dir() -> Path:
    """``$MEGATRON_PLM_SHARED_DATA`` if set, else the checkout's ``data/``."""
    override = os.environ.get(DATA_ENV)
    return Path(override) if override else REPO_DATA


def data_path(relative: str) -> Path:
    """``relative`` (e.g. :data:`DMS_ASSAYS`) inside :func:`data_dir`."""
    return data_dir() / relative


def require_input(path: Path, flag: str, *, directory: bool = False) -> Path:
    """``path`` given to (or defaulted for) ``flag``; ``FileNotFoundError`` naming the flag if it is missing."""
    if path.is_dir() if directory else path.is_file():
        return path
    kind = "folder" if directory else "file"
    where = f"{path}" if path.is_absolute() else f"{path} (from {Path.cwd()})"
    hint = ""
    if os.environ.get(DATA_ENV) and data_dir().absolute() in path.absolute().parents:
        hint = f"; ${DATA_ENV} is {data_dir()}: point it at a folder laid out like data/, or pass {flag}"
    elif REPO_DATA in path.absolute().parents:
        hint = (
            f"; this default lives in the checkout's data/, which this install does not have (a wheel carries no "
            f"data): pass {flag} {kind.upper()} or set {DATA_ENV}"
        )
    raise FileNotFoundError(f"{flag}: no such {kind}: {where}{hint}")
