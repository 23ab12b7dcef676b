"""A corpus is never replaced silently, never lost to an interrupted run, and never read when its
files disagree with ``meta.json``."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from conftest import run_python
from megatron_plm.data.corpus import Corpus, CorpusWriteError, CorpusWriter, corpus_paths, recover_interrupted
from megatron_plm.data.preprocess.fasta import InputFormatError
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

OLD = b">sp|P1|A\nMKTAYIAKQRQISFVK\n>sp|P2|B\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n"
NEW = b">sp|Q1|C\nMAAAAAAAAK\n"


def make(tmp_path, content=OLD, name="corpus", **options):
    path = tmp_path / f"{name}-{len(content)}.fasta"
    path.write_bytes(content)
    prefix = tmp_path / "out" / name
    preprocess(PreprocessConfig(inputs=[str(path)], output_prefix=str(prefix), progress=False, **options))
    return prefix


def snapshot(prefix):
    return {p.name: p.read_bytes() for p in prefix.parent.iterdir()}


def test_jsonl_id_with_a_newline_is_refused(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text(
        json.dumps({"id": "P1", "sequence": "MKT"}) + "\n" + json.dumps({"id": "P2\nP3", "sequence": "MKV"}) + "\n"
    )
    with pytest.raises(InputFormatError, match=rf"{path}:2: field 'id' contains a line break"):
        preprocess(PreprocessConfig(inputs=[str(path)], output_prefix=str(tmp_path / "out" / "c"), progress=False))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_replacing_a_corpus_needs_overwrite(tmp_path):
    prefix = make(tmp_path)
    before = snapshot(prefix)
    with pytest.raises(
        FileExistsError, match=r"corpus\.\w+(\.\w+)? exists: a corpus is already at .*; pass --overwrite"
    ):
        make(tmp_path, NEW)
    assert snapshot(prefix) == before
    make(tmp_path, NEW, overwrite=True)
    assert Corpus.open(prefix).record_ids() == ["sp|Q1|C"]
    assert sorted(p.name for p in prefix.parent.iterdir()) == sorted(before)  # no backups left


def _run_killed(tmp_path, prefix, patch):
    """Preprocess NEW over ``prefix`` in a child process that ``patch`` kills part-way."""
    source = tmp_path / "new.fasta"
    source.write_bytes(NEW)
    script = f"""
import os, signal
import megatron_plm.data.corpus as corpus
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
{patch}
preprocess(PreprocessConfig(inputs=[{str(source)!r}], output_prefix={str(prefix)!r}, progress=False, overwrite=True))
"""
    return run_python(script)


def test_a_kill_during_the_swap_loses_neither_corpus(tmp_path):
    prefix = make(tmp_path)
    before = snapshot(prefix)
    # SIGKILL right after the new .bin replaced the old one (the old .idx already gone)
    patch = """
real, calls = os.replace, []
def replace(a, b):
    real(a, b); calls.append(b)
    if str(b).endswith(".bin"):
        os.kill(os.getpid(), signal.SIGKILL)
corpus.os.replace = replace
"""
    done = _run_killed(tmp_path, prefix, patch)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with pytest.raises(FileNotFoundError, match=r"corpus\.idx not found"):
        Corpus.open(prefix)
    recover_interrupted(prefix)  # what the next preprocess at this prefix does first
    assert snapshot(prefix) == before
    assert len(Corpus.open(prefix)) == 2


def test_sigterm_removes_temporary_files(tmp_path):
    prefix = tmp_path / "out" / "corpus"
    patch = """
add = corpus.CorpusWriter.add
def add_then_terminated(self, *args):
    add(self, *args)
    os.kill(os.getpid(), signal.SIGTERM)
corpus.CorpusWriter.add = add_then_terminated
"""
    done = _run_killed(tmp_path, prefix, patch)
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    assert not list((tmp_path / "out").iterdir()), "temporary files left behind"


def test_stale_temporary_files_are_removed_and_live_ones_refused(tmp_path, capsys):
    finished = subprocess.Popen(["true"])
    finished.wait()
    prefix = tmp_path / "out" / "corpus"
    prefix.parent.mkdir()
    stale = [prefix.with_name(f"corpus.bin.tmp-{finished.pid}"), prefix.with_name(f"corpus.lengths.tmp-{finished.pid}")]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    make(tmp_path)
    assert not any(p.exists() for p in stale)
    assert f"(pid {finished.pid}) was interrupted" in capsys.readouterr().err
    with subprocess.Popen(["sleep", "30"]) as alive:
        try:
            prefix.with_name(f"corpus.bin.tmp-{alive.pid}").write_bytes(b"x")
            with pytest.raises(FileExistsError, match=rf"another process \(pid {alive.pid}\) is writing a corpus"):
                make(tmp_path, overwrite=True)
        finally:
            alive.kill()


def test_full_disk_during_clean_up_still_removes_every_temporary_file(tmp_path):
    prefix = tmp_path / "out" / "corpus"
    writer = CorpusWriter(prefix, with_clusters=False)
    writer.add(np.array([5, 6, 7], dtype=np.uint8), np.array([3]), b"a\n", 0, None)
    writer._bin.close()
    writer._bin = open("/dev/full", "wb")  # buffered bytes that cannot be flushed: close() raises ENOSPC
    writer._bin.write(b"tokens")
    writer.abort()
    assert not list(prefix.parent.iterdir())


@pytest.fixture
def corpus_copy(tmp_path, sample_corpus):
    prefix = tmp_path / "copy"
    for name, path in corpus_paths(sample_corpus).items():
        if path.exists():
            corpus_paths(prefix)[name].write_bytes(path.read_bytes())
    Corpus.open(prefix)
    return prefix


def test_truncated_index_is_named(corpus_copy):
    idx = corpus_paths(corpus_copy)["idx"]
    idx.write_bytes(idx.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{idx} is [0-9,]+ bytes, expected [0-9,]+ for 10,000 documents"):
        Corpus.open(corpus_copy)


def test_reversed_bin_is_named(corpus_copy):
    path = corpus_paths(corpus_copy)["bin"]
    path.write_bytes(path.read_bytes()[::-1])
    with pytest.raises(ValueError, match=rf"{path} differs from the file preprocess wrote"):
        Corpus.open(corpus_copy)


def test_index_of_another_corpus_is_named(corpus_copy, tmp_path):
    other = make(tmp_path)
    corpus_paths(corpus_copy)["idx"].write_bytes(corpus_paths(other)["idx"].read_bytes())
    with pytest.raises(ValueError, match=r"copy\.idx indexes 2 documents, .*copy\.meta\.json says 10,000"):
        Corpus.open(corpus_copy)
    header = bytearray(corpus_paths(other)["idx"].read_bytes())
    header[:4] = b"XXXX"
    corpus_paths(corpus_copy)["idx"].write_bytes(bytes(header))
    with pytest.raises(ValueError, match=r"copy\.idx is not a megatron index \(bad header\)"):
        Corpus.open(corpus_copy)
    corpus_paths(corpus_copy)["meta"].write_text("{")
    with pytest.raises(ValueError, match=r"copy\.meta\.json is corrupt"):
        Corpus.open(corpus_copy)


def test_a_failed_swap_restores_the_previous_corpus(tmp_path, monkeypatch):
    prefix = make(tmp_path)
    before = snapshot(prefix)
    real, failed = os.replace, []

    def replace_then_fail(source, target):
        real(source, target)
        if str(target).endswith(".ids.txt") and not failed:  # the new .bin is already in place
            failed.append(target)
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(CorpusWriteError, match="cannot write the corpus at .*corpus: No space left"):
        make(tmp_path, NEW, overwrite=True)
    monkeypatch.setattr(os, "replace", real)
    assert snapshot(prefix) == before
