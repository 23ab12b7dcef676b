"""Preprocessing at the study's scale, on the shipped sample: the cluster join in bounded memory gives the same
corpus; a corpus the disk cannot hold is refused before writing; shards merged are the one-run corpus, byte for byte."""

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
