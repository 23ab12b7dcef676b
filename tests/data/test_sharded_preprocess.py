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


@pytest.fixture(scope="module")
def split_sample(tmp_path_factory, sample_fasta):
    """The shipped sample cut into 5 FASTA files of unequal sizes (1000 .. 3000 records)."""
    import gzip
    import re

    text = gzip.decompress(sample_fasta.read_bytes())
    starts = [m.start() for m in re.finditer(rb"^>", text, re.MULTILINE)] + [len(text)]
    folder = tmp_path_factory.mktemp("split")
    cuts = [0, 1000, 4000, 5500, 8000, len(starts) - 1]
    paths = []
    for part, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        path = folder / f"part{part}.fasta"
        path.write_bytes(text[starts[a] : starts[b]])
        paths.append(path)
    return paths


def test_shards_merged_are_the_one_run_corpus_byte_for_byte(split_sample, sample_fasta, tmp_path, capsys, monkeypatch):
    from megatron_plm.cli import main
    from megatron_plm.data.preprocess import merge

    clusters = str(sample_fasta).replace(".fasta.gz", ".clusters50.tsv.gz")
    labels = [part for label in "abacb" for part in ("--source-label", label)]
    common = ["--clusters", clusters, "--no-progress", *labels]
    inputs = ["--input", *map(str, split_sample)]
    assert main(["preprocess", *inputs, "--output-prefix", str(tmp_path / "one"), *common]) == 0
    for i in (2, 0, 1):  # any order
        shard = ["--shard", f"{i}/3", "--output-prefix", str(tmp_path / f"shard{i}")]
        assert main(["preprocess", *inputs, *shard, *common]) == 0
    got = [__import__("json").loads((tmp_path / f"shard{i}.meta.json").read_text())["inputs"] for i in range(3)]
    # contiguous; a file goes where its middle falls (records 1000 3000 | 1500 | 2500 2000; thirds at 3333, 6667)
    assert [len(g) for g in got] == [2, 1, 2]
    shards = [str(tmp_path / f"shard{i}") for i in (1, 2, 0)]
    assert main(["merge-corpora", "--input", *shards, "--output-prefix", str(tmp_path / "merged")]) == 0
    same_files(tmp_path / "one", tmp_path / "merged")
    monkeypatch.setattr(merge, "_BLOCK_DOCUMENTS", 777)  # many blocks, ids read 1000 bytes at a time
    monkeypatch.setattr(merge, "_READ_BYTES", 1000)
    assert main(["merge-corpora", "--input", *shards, "--output-prefix", str(tmp_path / "blocks")]) == 0
    same_files(tmp_path / "one", tmp_path / "blocks")
    capsys.readouterr()
    # incomplete, or shards of another run: refused, nothing written
    assert main(["merge-corpora", "--input", *shards[:2], "--output-prefix", str(tmp_path / "x")]) == 2
    assert "the shards of 3 are incomplete: missing 0/3" in capsys.readouterr().err
    assert (
        main(
            [
                "preprocess",
                *inputs,
                "--shard",
                "0/3",
                "--output-prefix",
                str(tmp_path / "other0"),
                *common,
                "--min-length",
                "50",
            ]
        )
        == 0
    )
    assert (
        main(
            ["merge-corpora", "--input", *shards[:2], str(tmp_path / "other0"), "--output-prefix", str(tmp_path / "x")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "shard1.meta.json: settings" in err and "other0.meta.json: the shards were not preprocessed alike" in err
    assert not list(tmp_path.glob("x.*"))


def test_shard_option_errors_name_the_flag(split_sample, tmp_path):
    from megatron_plm.data.preprocess.pipeline import shard_inputs

    for shard, message in [("3/3", "I must be in 0..N-1"), ("1-3", "takes I/N"), ("0/6", "only 5 input files")]:
        with pytest.raises(ValueError, match=message):
            preprocess(
                PreprocessConfig(
                    inputs=[str(p) for p in split_sample],
                    output_prefix=str(tmp_path / "s"),
                    shard=shard,
                    progress=False,
                )
            )
    with pytest.raises(ValueError, match="--dedup cannot be combined with --shard"):
        PreprocessConfig(inputs=["x"], output_prefix="y", shard="0/2", dedup=True).validate()
    files = [(str(p), "x") for p in split_sample]
    for count in range(1, 6):  # every file in exactly one shard, in order, none empty
        parts = [shard_inputs(files, i, count) for i in range(count)]
        assert sum(parts, []) == files and all(parts)
