"""The index cache: built once, read back identically, rebuilt when damaged, errors that name the path."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_plm.data.samples import splits as splits_module
from megatron_plm.data.samples.builder import DataBuilder
from megatron_plm.data.samples.config import DataConfig, DataSource
from megatron_plm.data.samples.index_cache import IndexCache, IndexCacheError, Role
from megatron_plm.data.samples.splits import Split

REPO = Path(__file__).resolve().parents[2]


def config(prefix, cache_dir, **overrides):
    fields = dict(seq_length=64, reverse_prob=0.3, cache_dir=str(cache_dir))
    fields.update(overrides)
    return DataConfig(sources=[DataSource(prefix=str(prefix))], **fields)


def make_builder(prefix, cache_dir, objective="clm", **overrides):
    return DataBuilder(config(prefix, cache_dir, **overrides), objective)


def batches(dataset, count=64):
    return dataset.samples(np.arange(count))


def assert_same(a, b):
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_native_split_hash_equals_hashlib():
    if splits_module._native() is None:
        pytest.skip("the C++ split hash is not built (python setup.py build_ext --inplace)")
    rng = np.random.default_rng(0)
    fields = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (0, 1, 8, 127, 128, 129, 256, 257, 4000)]
    buffer = np.frombuffer(b"".join(fields), dtype=np.uint8)
    lengths = np.array([len(f) for f in fields])
    got = splits_module.unit_intervals(buffer, np.r_[0, np.cumsum(lengths)[:-1]], lengths, b"megatron_plm")
    assert got.tolist() == [splits_module._unit_interval(f, b"megatron_plm") for f in fields]


@pytest.mark.parametrize("objective, packed", [("clm", True), ("mlm", False)])
def test_cached_run_yields_the_batches_of_an_uncached_one(sample_corpus, tmp_path, objective, packed):
    overrides = dict(objective=objective, packed=packed, reverse_prob=0.3 if objective == "clm" else 0.0)
    plain = make_builder(sample_corpus, tmp_path, cache=False, **overrides).build(Split.TRAIN, 256)
    first = make_builder(sample_corpus, tmp_path, **overrides)
    cold = first.build(Split.TRAIN, 256)
    assert len(first.cache(str(sample_corpus)).built) == 2  # splits + the dataset
    second = make_builder(sample_corpus, tmp_path, **overrides)
    warm = second.build(Split.TRAIN, 256)
    assert second.cache(str(sample_corpus)).built == []  # a second launch builds nothing
    assert isinstance(warm.doc_order, np.memmap) or isinstance(warm.doc_order.base, np.memmap)
    for dataset in (cold, warm):
        assert_same(batches(plain), batches(dataset))
        assert np.array_equal(plain.order.units.documents, dataset.order.units.documents)
    # A field that shapes the samples gets its own entry; the old one stays valid.
    third = make_builder(sample_corpus, tmp_path, seed=99, **overrides)
    third.build(Split.TRAIN, 256)
    assert len(third.cache(str(sample_corpus)).built) == 1  # same splits, new sample index


def test_damaged_entries_are_rebuilt_never_used(sample_corpus, tmp_path, caplog):
    reference = batches(make_builder(sample_corpus, tmp_path, cache=False).build(Split.TRAIN, 128))
    builder = make_builder(sample_corpus, tmp_path)
    builder.build(Split.TRAIN, 128)
    entry = next(p for p in builder.cache(str(sample_corpus)).built if ".all.train-" in p.name)
    shuffle = entry / "shuffle.npy"
    with open(shuffle, "r+b") as handle:  # same size, one byte changed: only the hash sees it (small: all sampled)
        handle.seek(-3, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-3, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))
    rebuilt = make_builder(sample_corpus, tmp_path)
    assert_same(reference, batches(rebuilt.build(Split.TRAIN, 128)))
    assert [p.name for p in rebuilt.cache(str(sample_corpus)).built] == [entry.name]
    assert "fails its sampled SHA-256 check" in caplog.text
    with open(entry / "doc_order.npy", "r+b") as handle:  # truncated
        handle.truncate(100)
    # A staging directory left by a killed builder is never read, and is cleared by the next builder.
    abandoned = entry.with_name(entry.name + ".tmp-" + os.uname().nodename + "-999999999")
    shutil.copytree(entry, abandoned)
    again = make_builder(sample_corpus, tmp_path)
    assert_same(reference, batches(again.build(Split.TRAIN, 128)))
    assert "truncated" in caplog.text and not abandoned.exists()


def test_a_different_corpus_at_the_same_path_gets_new_entries(tmp_path, sample_fasta):
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

    prefix = tmp_path / "corpus"
    cache_dir = tmp_path / "cache"
    preprocess(PreprocessConfig(inputs=[str(sample_fasta)], output_prefix=str(prefix), max_length=300, progress=False))
    make_builder(prefix, cache_dir).build(Split.TRAIN, 128)
    preprocess(
        PreprocessConfig(
            inputs=[str(sample_fasta)], output_prefix=str(prefix), min_length=301, progress=False, overwrite=True
        )
    )
    builder = make_builder(prefix, cache_dir)
    dataset = builder.build(Split.TRAIN, 128)
    assert len(builder.cache(str(prefix)).built) == 2
    assert_same(batches(make_builder(prefix, cache_dir, cache=False).build(Split.TRAIN, 128)), batches(dataset))


def test_unwritable_cache_dir_names_the_path_and_the_fix(sample_corpus, tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "a-file"
        blocked.write_text("not a directory")
        cache_dir = blocked / "cache"
    else:
        cache_dir = tmp_path / "read-only"
        cache_dir.mkdir(mode=0o500)
    with pytest.raises(IndexCacheError, match=rf"cannot write the index cache in {cache_dir}.*data.cache_dir"):
        make_builder(sample_corpus, cache_dir).build(Split.TRAIN, 64)


def test_a_rank_that_waits_too_long_names_the_entry(tmp_path):
    cache = IndexCache(tmp_path, timeout_s=0.3, role=Role(rank=3, local_rank=1))
    with pytest.raises(
        IndexCacheError,
        match=r"rank 3 waited 0 s for the index cache .*/c\.splits-[0-9a-f]{16} "
        r"\(not there yet\).*data.cache_timeout_s",
    ):
        cache.get("c.splits", {"x": 1}, lambda: pytest.fail("a waiting rank must not build"))


@pytest.mark.slow
def test_four_ranks_read_one_cache_built_once(sample_corpus, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(f"""
import json, os, sys
import numpy as np
from megatron_plm.data.samples.builder import DataBuilder
from megatron_plm.data.samples.config import DataConfig, DataSource
from megatron_plm.data.samples.splits import Split
import torch.distributed as dist
dist.init_process_group("gloo")
builder = DataBuilder(DataConfig(sources=[DataSource(prefix={str(sample_corpus)!r})], seq_length=64,
                                 cache_dir={str(tmp_path / "cache")!r}), "mlm")
data = builder.build(Split.TRAIN, 512)
tokens = data.samples(np.arange(32))["tokens"]
out = dict(rank=dist.get_rank(), built=[p.name for p in builder.cache({str(sample_corpus)!r}).built],
           tokens=tokens.tolist(), mapped=isinstance(data.doc_order, np.memmap) or isinstance(data.doc_order.base, np.memmap))
open(os.path.join({str(tmp_path)!r}, f"rank{{dist.get_rank()}}.json"), "w").write(json.dumps(out))
dist.barrier()
dist.destroy_process_group()
""")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "4", str(script)],
        env=env,
        check=True,
        timeout=600,
        capture_output=True,
    )
    import json

    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert len(results[0]["built"]) == 2 and all(not r["built"] for r in results[1:])
    assert all(r["mapped"] for r in results[1:])
    assert all(r["tokens"] == results[0]["tokens"] for r in results)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one splits entry, one dataset entry; nothing staged


def _flip(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_open_reads_samples_not_the_whole_entry_and_verifies_in_full_on_request(tmp_path, monkeypatch, caplog):
    """8 MB of doc_order: an open reads ~4 MiB of it (sizes + 64 sampled blocks); a byte flipped between the
    sampled blocks is seen only by the full CRC-32 (data.cache_verify / MEGATRON_PLM_CACHE_VERIFY=1)."""
    from megatron_plm.data.samples import index_cache

    order = np.random.default_rng(0).permutation(1_000_000)
    builds = []

    def build():
        builds.append(1)
        return {"doc_order": order}

    cache = IndexCache(tmp_path, role=Role())
    assert np.array_equal(cache.get("o", {"n": 1}, build)["doc_order"], order) and len(builds) == 1
    entry = cache.built[0]
    path = entry / "doc_order.npy"
    read = []
    real_crc32 = index_cache._crc32
    monkeypatch.setattr(index_cache, "_crc32", lambda p: read.append(p) or real_crc32(p))
    assert np.array_equal(IndexCache(tmp_path, role=Role()).get("o", {"n": 1}, build)["doc_order"], order)
    assert read == [] and len(builds) == 1  # no full read at open
    _flip(path, (1 << 16) + 1000)  # past the first sampled block, before the second (~127 KB in)
    assert np.array_equal(
        IndexCache(tmp_path, role=Role(rank=1)).get("o", {"n": 1}, build)["doc_order"][:10], order[:10]
    )
    assert len(builds) == 1  # the sampled check does not see this byte: the documented trade-off
    monkeypatch.setenv(index_cache.VERIFY_ENV, "1")
    verified = IndexCache(tmp_path, role=Role())
    assert np.array_equal(verified.get("o", {"n": 1}, build)["doc_order"], order)
    assert len(builds) == 2 and "fails its CRC-32 check" in caplog.text and read
    monkeypatch.delenv(index_cache.VERIFY_ENV)
    # torn writes at the start or the end, a changed size, or a changed description: caught by every open
    for damage in ("head", "tail", "size"):
        if damage == "size":
            with open(path, "ab") as handle:
                handle.write(b"\0")
        else:
            _flip(path, 200 if damage == "head" else path.stat().st_size - 5)
        before = len(builds)
        assert np.array_equal(IndexCache(tmp_path, role=Role()).get("o", {"n": 1}, build)["doc_order"], order)
        assert len(builds) == before + 1, damage
    manifest = entry / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"n": 1', '"n": 2'))
    assert IndexCache(tmp_path, role=Role())._load(entry, {"n": 1}).startswith("manifest describes different")


def test_a_cache_entry_the_disk_cannot_hold_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil as shutil_module

    from megatron_plm.safe_io import InsufficientSpaceError

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=1_000_000))
    cache = IndexCache(tmp_path / "cache", role=Role())
    with pytest.raises(
        InsufficientSpaceError,
        match=r"index cache entry o-[0-9a-f]{16} needs about 8\.00 MB .* has 1\.00 MB free.*data\.cache_dir",
    ):
        cache.get("o", {"n": 1}, lambda: {"doc_order": np.arange(1_000_000)})
    assert list((tmp_path / "cache").iterdir()) == []  # no staging left behind
    assert (
        IndexCache(tmp_path / "cache", role=Role(), check_space=False).get(
            "o", {"n": 1}, lambda: {"doc_order": np.arange(1_000_000)}
        )["doc_order"][-1]
        == 999_999
    )
