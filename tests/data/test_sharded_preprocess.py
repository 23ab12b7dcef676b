"""Preprocessing at the study's scale, on the shipped sample: the cluster join in bounded memory gives the same
corpus; a corpus the disk cannot hold is refused before writing; shards merged are the one-run corpus, byte for byte."""

import pytest

from megatron_plm.data.corpus import corpus_paths
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

CLUSTER_FILES = ("bin", "idx", "ids", "source", "cluster", "clusters", "meta")


def same_files(a, b, names=CLUSTER_FILES):
    for name in names:
        assert corpus_paths(a)[name].read_bytes() == corpus_paths(b)[name].read_bytes(), name


def test_bounded_memory_join_writes_the_same_corpus(sample_corpus, sample_fasta, tmp_path):
    clusters = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    prefix = tmp_path / "out" / "uniref90_sample"
    preprocess(
        PreprocessConfig(
            inputs=[str(sample_fasta)],
            output_prefix=str(prefix),
            clusters=clusters,
            source_labels=["uniref90"],
            progress=False,
            cluster_memory_gb=1e-5,  # 10 kB: out of core
        )
    )
    same_files(sample_corpus, prefix)
    assert sorted(p.name for p in prefix.parent.iterdir()) == sorted(p.name for p in corpus_paths(prefix).values())


def test_a_killed_joins_temporary_files_are_removed_by_the_next_one(tmp_path):
    import os

    from megatron_plm.data.preprocess.clusters import remove_abandoned_joins

    dead, alive = tmp_path / ".cluster-join.tmp-999999999", tmp_path / f".cluster-join.tmp-{os.getppid()}"
    for folder in (dead, alive):
        (folder / "rep").mkdir(parents=True)
    (tmp_path / ".cluster-join.v2.tmp-999999999").mkdir()  # not ours
    remove_abandoned_joins(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, ".cluster-join.v2.tmp-999999999"])


def _full_disk(monkeypatch, free):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


def test_a_corpus_the_disk_cannot_hold_is_refused_before_writing(sample_fasta, tmp_path, monkeypatch, capsys):
    from megatron_plm.cli import main
    from megatron_plm.data.preprocess.pipeline import estimate_output_bytes, uncompressed_size
    from megatron_plm.safe_io import InsufficientSpaceError

    import gzip

    assert uncompressed_size(str(sample_fasta)) == (len(gzip.decompress(sample_fasta.read_bytes())), True)
    needed, _ = estimate_output_bytes([str(sample_fasta)], 1, False)
    written = preprocess(
        PreprocessConfig(inputs=[str(sample_fasta)], output_prefix=str(tmp_path / "a"), progress=False)
    )
    actual = sum(path.stat().st_size for path in written[1].values())
    assert actual <= needed <= 3 * actual  # an upper estimate, not a wild one
    (tmp_path / "out").mkdir()
    _full_disk(monkeypatch, needed - 1)
    prefix = tmp_path / "out" / "corpus"
    with pytest.raises(
        InsufficientSpaceError,
        match=r"corpus at .*/out/corpus needs about \d\.\d\d MB \(3\.6 MB of input text x 1 byte\(s\) per token \+ 28 bytes",
    ):
        preprocess(PreprocessConfig(inputs=[str(sample_fasta)], output_prefix=str(prefix), progress=False))
    assert list((tmp_path / "out").iterdir()) == []
    assert main(["preprocess", "--input", str(sample_fasta), "--output-prefix", str(prefix), "--no-progress"]) == 2
    assert "free space, choose another --output-prefix, or pass --no-space-check" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []
    args = ["preprocess", "--input", str(sample_fasta), "--output-prefix", str(prefix), "--no-progress"]
    assert main([*args, "--no-space-check"]) == 0
    same_files(tmp_path / "a", prefix, ["bin", "idx", "ids", "source"])


def test_an_out_of_core_join_the_disk_cannot_hold_is_refused(sample_fasta, tmp_path, monkeypatch):
    from megatron_plm.safe_io import InsufficientSpaceError

    _full_disk(monkeypatch, 100_000)
    clusters = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    with pytest.raises(
        InsufficientSpaceError, match=r"out-of-core join of .*clusters50.tsv.gz needs about .*--cluster-temp-dir"
    ):
        preprocess(
            PreprocessConfig(
                inputs=[str(sample_fasta)],
                output_prefix=str(tmp_path / "c"),
                clusters=clusters,
                cluster_memory_gb=1e-5,
                progress=False,
            )
        )
    assert list(tmp_path.iterdir()) == []
