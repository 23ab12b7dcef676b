"""The corpus on real data: round trip, C++/reference parity, megatron compatibility, options."""

import gzip
import json

import numpy as np
import pytest

from megatron_plm.data.corpus import Corpus, corpus_paths
from megatron_plm.data.preprocess.encode import native_available
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
from megatron_plm.data.tokenizers.protein import ProteinTokenizer
from megatron_plm.shipped_data import SAMPLE_FASTA, UNIPROT_QUERY, data_path

needs_native = pytest.mark.skipif(not native_available(), reason="C++ extension not built")
CORPORA = [SAMPLE_FASTA, data_path(UNIPROT_QUERY)]
"""The shipped corpora: UniRef90 (gzip, one line per sequence) and UniProtKB (plain, wrapped, full headers)."""


def independent_fasta(path):
    """A deliberately simple second parser: (id, upper-cased residues without trailing '*')."""
    opener = gzip.open if str(path).endswith(".gz") else open
    records, name, parts = [], None, []
    with opener(path, "rt") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith(">"):
                if name is not None:
                    records.append((name, "".join(parts).upper().rstrip("*")))
                name, parts = line[1:].split()[0], []
            elif line:
                parts.append(line)
    records.append((name, "".join(parts).upper().rstrip("*")))
    return records


def run(tmp_path, inputs, name="corpus", **options):
    prefix = tmp_path / name
    options.setdefault("progress", False)
    summary, files = preprocess(PreprocessConfig(inputs=[str(p) for p in inputs], output_prefix=str(prefix), **options))
    return prefix, summary, files


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.name)
def test_round_trip_on_shipped_corpora(tmp_path, path):
    prefix, summary, _ = run(tmp_path, [path])
    expected = independent_fasta(path)
    opened = Corpus.open(prefix)
    dataset = opened.indexed_dataset()
    tokenizer = ProteinTokenizer()
    assert len(dataset) == len(expected) == summary.documents_written == len(opened)
    assert opened.record_ids() == [name for name, _ in expected]
    for i, (_, sequence) in enumerate(expected):
        assert tokenizer.decode(dataset[i]) == sequence
    assert np.array_equal(dataset.sequence_lengths, [len(s) for _, s in expected])
    assert summary.residues_written == sum(len(s) for _, s in expected)
    assert np.all(opened.source_index() == 0) and opened.source_labels == [opened.meta["sources"][0]]


@needs_native
@pytest.mark.parametrize("workers", [1, 2])
def test_native_and_reference_write_identical_files(tmp_path, workers):
    inputs = CORPORA
    options = dict(
        clusters=str(SAMPLE_FASTA).replace(".fasta.gz", ".clusters50.tsv.gz"),  # covers the UniRef90 sample only
        dedup=True,
        chunk_bytes=1 << 20,
    )
    ref, _, ref_files = run(tmp_path, inputs, "reference", implementation="reference", workers=1, **options)
    nat, _, nat_files = run(tmp_path, inputs, "native", implementation="native", workers=workers, **options)
    assert sorted(ref_files) == sorted(nat_files)
    for name in ref_files:
        if name == "meta":
            continue
        assert ref_files[name].read_bytes() == nat_files[name].read_bytes(), name
    ref_meta, nat_meta = (json.loads(files["meta"].read_text()) for files in (ref_files, nat_files))
    assert ref_meta["summary"] == nat_meta["summary"]


def test_index_is_byte_identical_to_megatron_builder(tmp_path, sample_fasta):
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix, _, files = run(tmp_path, [sample_fasta])
    ours = Corpus.open(prefix).indexed_dataset()
    builder = IndexedDatasetBuilder(str(tmp_path / "megatron.bin"), dtype=np.uint8)
    for i in range(len(ours)):
        builder.add_document(torch.from_numpy(ours[i].astype(np.int64)), [len(ours[i])])
    builder.finalize(str(tmp_path / "megatron.idx"))
    assert (tmp_path / "megatron.idx").read_bytes() == files["idx"].read_bytes()
    assert (tmp_path / "megatron.bin").read_bytes() == files["bin"].read_bytes()
    from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType

    from megatron_plm.data import corpus

    assert corpus.INDEX_HEADER == _INDEX_HEADER
    assert corpus.TOKEN_DTYPE_CODES == {
        name: DType.code_from_dtype(getattr(np, name)) for name in corpus.TOKEN_DTYPE_CODES
    }


def test_preprocessing_imports_neither_torch_nor_megatron_core(tmp_path, sample_fasta):
    """Preprocessing writes the .idx format itself, so it starts fast (no torch import)."""
    import subprocess
    import sys

    from conftest import REPO

    code = (
        "import sys; sys.argv[1:] = ['--input', {!r}, '--output-prefix', {!r}, '--no-progress']; "
        "import runpy; runpy.run_path('tools/preprocess_data.py', run_name='not_main'); "
        "from megatron_plm.cli import main; assert main(['preprocess', *sys.argv[1:]]) == 0; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'transformers')); "
        "assert not heavy, heavy"
    ).format(str(sample_fasta), str(tmp_path / "c"))
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    assert (tmp_path / "c.idx").exists()


def test_gpt_dataset_reads_the_corpus(tmp_path, sample_fasta):
    """megatron-core's GPTDataset accepts the corpus and our tokenizer (what the CLM dataset builds on)."""
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import Split

    prefix, _, _ = run(tmp_path, [sample_fasta])
    tokenizer = ProteinTokenizer()
    config = GPTDatasetConfig(
        random_seed=1,
        sequence_length=64,
        blend=None,
        blend_per_split=None,
        split="1,0,0",
        path_to_cache=str(tmp_path / "cache"),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        mid_level_dataset_surplus=0.005,
    )
    indexed = Corpus.open(prefix).indexed_dataset()
    dataset = GPTDataset(indexed, str(prefix), np.arange(len(indexed)), 10, Split.train, config)
    sample = dataset[0]["tokens"].numpy()
    assert sample.shape == (64,) and sample.max() < tokenizer.vocab_size


def test_sources_filters_dedup_and_clusters(tmp_path, shared_data, sample_fasta):
    query = shared_data / UNIPROT_QUERY
    again = tmp_path / "query_again.fasta"  # a second source that repeats the first's sequences
    again.write_bytes(query.read_bytes())
    prefix, summary, _ = run(
        tmp_path,
        [sample_fasta, query, again],
        source_labels=["uniref90", "uniprot", "again"],
        dedup=True,
        min_length=30,
        max_length=1000,
        clusters=str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz"),
    )
    expected = [(n, s, src) for src, p in enumerate([sample_fasta, query, again]) for n, s in independent_fasta(p)]
    kept, seen = [], set()
    too_short = too_long = duplicate = 0
    for name, sequence, source in expected:
        if len(sequence) < 30:
            too_short += 1
        elif len(sequence) > 1000:
            too_long += 1
        elif sequence in seen:
            duplicate += 1
        else:
            seen.add(sequence)
            kept.append((name, source))
    assert summary.skipped == {
        "invalid_character": 0,
        "too_short": too_short,
        "too_long": too_long,
        "duplicate": duplicate,
        "excluded": 0,
    }
    assert duplicate > 400  # the query set repeats 2 of its sequences, and its copy all that the filters keep
    opened = Corpus.open(prefix)
    assert opened.record_ids() == [name for name, _ in kept]
    assert opened.source_labels == ["uniref90", "uniprot", "again"]
    assert opened.source_index().tolist() == [source for _, source in kept]
    # The cluster file covers the UniRef90 sample only: its documents all have a cluster, the others none.
    clusters = opened.cluster_index()
    names = corpus_paths(prefix)["clusters"].read_text().splitlines()
    mapping = {}
    with gzip.open(str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz"), "rt") as handle:
        next(handle)
        for line in handle:
            representative, member = line.rstrip("\n").split("\t")
            mapping[member] = representative
    for (name, source), cluster in zip(kept, clusters):
        if source == 0:
            assert names[cluster] == mapping[name]
        else:
            assert cluster == -1
    assert summary.documents_without_cluster == sum(1 for _, s in kept if s > 0)


def test_jsonl_and_globs(tmp_path, real_fasta):
    records = independent_fasta(real_fasta)[:40]
    for part in range(2):
        rows = records[part * 20 : (part + 1) * 20]
        text = "".join(json.dumps({"id": n, "seq": s.lower()}) + "\n" for n, s in rows)
        (tmp_path / f"part{part}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    prefix, summary, _ = run(tmp_path, [tmp_path / "part*.jsonl.gz"], json_keys=["seq"], workers=2)
    opened = Corpus.open(prefix)
    assert opened.record_ids() == [n for n, _ in records]
    assert opened.source_labels == ["part0", "part1"]
    tokenizer = ProteinTokenizer()
    dataset = opened.indexed_dataset()
    assert [tokenizer.decode(dataset[i]) for i in range(len(dataset))] == [s for _, s in records]


def test_cli_prints_summary(tmp_path, sample_fasta):
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run(
        [
            sys.executable,
            "tools/preprocess_data.py",
            "--input",
            str(sample_fasta),
            "--output-prefix",
            str(tmp_path / "c"),
            "--workers",
            "2",
            "--min-length",
            "50",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    short = sum(1 for _, s in independent_fasta(sample_fasta) if len(s) < 50)
    assert f"too_short {short:,}" in out.stdout and "documents written  " in out.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "tools/preprocess_data.py",
            "--input",
            str(tmp_path / "nope*.fa"),
            "--output-prefix",
            str(tmp_path / "d"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "matched no file" in bad.stderr
