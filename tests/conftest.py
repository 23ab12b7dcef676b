"""Shared fixtures: where the real data lives."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_plm.shipped_data import UNIPROT_QUERY, data_dir

# One OpenBLAS thread for numpy and scipy, in this process and the commands it starts (set before either is
# imported): the suite's arrays are small, and scipy's 5-parameter L-BFGS-B fits (scaling laws) spent most of
# their time waking BLAS threads (measured with two threads, then one: the in-process parametric fit test
# 137 s, then 7.8 s; the fit CLI test 283 s, then 29 s). The largest matrix products here, the TEM-1 homolog
# weights, took 4.5 s with two threads and 4.2 s with one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Every megatron-core runtime the suite starts without a GPU, in this process and the commands it launches, is
# device-strict (megatron_plm/runtime/cpu.py): tensors are placed and checked as on a GPU, so a host tensor that
# would meet CUDA tensors fails here as it would there.
os.environ.setdefault("MEGATRON_PLM_DEVICE_STRICT", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data"
SHARED_DATA = data_dir()
"""The real evaluation data: the checkout's ``data/``, or ``$MEGATRON_PLM_SHARED_DATA`` (same layout)."""


def run_python(script: str, **kwargs) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter from the checkout (fault tests kill it part-way), output captured."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **kwargs,
    )


def train_command(*overrides: str, nproc: int = 0) -> list[str]:
    """``megatron-plm train`` of the tiny CLM config with ``overrides``: under torchrun with ``nproc`` ranks,
    or one plain process when ``nproc`` is 0."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc else []
    config = str(REPO / "examples/configs/tiny_clm.yaml")
    return [sys.executable, *launcher, "-m", "megatron_plm", "train", "--config", config, *overrides]


ESM2_8M = dict(
    vocab_size=33,
    hidden_size=320,
    num_hidden_layers=6,
    num_attention_heads=20,
    intermediate_size=1280,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    max_position_embeddings=1026,
    position_embedding_type="rotary",
    layer_norm_eps=1e-5,
    emb_layer_norm_before=False,
    token_dropout=True,
    mask_token_id=32,
    pad_token_id=1,
)
"""ESM-2 8M as published (facebook/esm2_t6_8M_UR50D config.json); tests build it with random weights."""


@pytest.fixture(scope="session")
def sample_fasta() -> Path:
    """The sample shipped in the repo (10k UniRef90 sequences)."""
    return SAMPLE_DIR / "uniref90_esm2_pretraining_sample_10k.fasta.gz"


@pytest.fixture(scope="session")
def real_fasta_bytes(sample_fasta) -> bytes:
    """The first 500 records of the shipped sample as plain FASTA: real sequences, present in every clone."""
    text = gzip.decompress(sample_fasta.read_bytes())
    record_501 = [m.start() for m in re.finditer(rb"^>", text, re.MULTILINE)][500]
    return text[:record_501]


@pytest.fixture(scope="session")
def real_fasta(tmp_path_factory, real_fasta_bytes) -> Path:
    """:func:`real_fasta_bytes` as a file."""
    path = tmp_path_factory.mktemp("real") / "sample_500.fasta"
    path.write_bytes(real_fasta_bytes)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real evaluation data (ProteinGym assays, secondary structure, TEM-1 alignment, UniProtKB sample),
    shipped in every clone: see :data:`SHARED_DATA`."""
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory, sample_fasta):
    """The shipped UniRef90 sample preprocessed, with its 50%-identity clusters (4,597)."""
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

    prefix = tmp_path_factory.mktemp("corpora") / "uniref90_sample"
    clusters = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    preprocess(
        PreprocessConfig(
            inputs=[str(sample_fasta)],
            output_prefix=str(prefix),
            clusters=clusters,
            source_labels=["uniref90"],
            progress=False,
        )
    )
    return prefix


@pytest.fixture(scope="session")
def uniprot_corpus(tmp_path_factory, shared_data):
    """The 500 UniProtKB sequences of MMseqs2's example query set (no clusters: split by sequence)."""
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

    prefix = tmp_path_factory.mktemp("corpora") / "uniprot_query"
    preprocess(
        PreprocessConfig(
            inputs=[str(shared_data / UNIPROT_QUERY)],
            output_prefix=str(prefix),
            source_labels=["uniprot"],
            progress=False,
        )
    )
    return prefix


@pytest.fixture(scope="session")
def subword_tokenizers(tmp_path_factory, sample_fasta):
    """A BPE vocabulary of 300 tokens (uint16 ids) from a 2,000-sequence sample of the shipped corpus, and a
    unigram one of 128 (uint8) from 300 sequences (its trainer is slow)."""
    from megatron_plm.data.preprocess.tokenizer_training import SubwordTrainConfig, train_subword_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for model_type, size, sample in (("bpe", 300, 2000), ("unigram", 128, 300)):
        train_subword_tokenizer(
            SubwordTrainConfig(
                inputs=[str(sample_fasta)],
                output=str(root / model_type),
                model_type=model_type,
                vocab_size=size,
                sample_sequences=sample,
                progress=False,
            )
        )
        out[model_type] = root / model_type
    return out


@pytest.fixture(scope="session")
def subword_corpus(tmp_path_factory, subword_tokenizers, sample_fasta):
    """The first 1,500 records of the shipped sample, preprocessed with the BPE tokenizer."""
    import itertools

    from megatron_plm.data.preprocess.fasta import read_fasta
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

    root = tmp_path_factory.mktemp("subword_corpus")
    fasta = root / "head.fasta"
    fasta.write_text(
        "".join(f">{r.record_id}\n{r.sequence.decode()}\n" for r in itertools.islice(read_fasta(sample_fasta), 1500))
    )
    summary, _ = preprocess(
        PreprocessConfig(
            inputs=[str(fasta)],
            output_prefix=str(root / "bpe"),
            tokenizer=str(subword_tokenizers["bpe"]),
            progress=False,
        )
    )
    return root / "bpe", fasta, summary


@pytest.fixture(scope="module")
def runtime():
    """A single-process megatron-core runtime for the module (conversion and evaluation need one)."""
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    with initialize(ParallelConfig(), seed=5) as rt:
        yield rt


@pytest.fixture(scope="session")
def _trained_checkpoints() -> dict:
    """Where :func:`trained` keeps its checkpoints for the session (filled by the first module that asks)."""
    return {}


@pytest.fixture(scope="module")
def trained(runtime, sample_corpus, tmp_path_factory, _trained_checkpoints):
    """Tiny CLM and MLM checkpoints after a few real steps on the shipped sample.

    Trained once per session, in the runtime of the first module that asks, and shared: tests only read
    them (a test that damages or relabels a checkpoint copies it first)."""
    from megatron_plm.training.config import load_config
    from megatron_plm.training.trainer import train

    if not _trained_checkpoints:
        root = tmp_path_factory.mktemp("trained")
        for objective in ("clm", "mlm"):
            config = load_config(
                REPO / f"examples/configs/tiny_{objective}.yaml",
                [
                    f"data.sources=[{{prefix: {sample_corpus}}}]",
                    "training.train_iters=4",
                    "training.eval_interval=0",
                    f"checkpoint.save={root / objective}",
                    "checkpoint.init_from=null",
                    "logging.log_interval=100",
                ],
            )
            train(config, runtime)
            _trained_checkpoints[objective] = root / objective
    return dict(_trained_checkpoints)


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first: pytest-xdist hands tests out in collection order, and a
    minutes-long test started near the end would leave one worker running it alone (longest first
    keeps both workers busy to the end of ``make test``)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
