"""Fault injection, command by command: nothing lost, nothing orphaned, no traceback.

Each case damages or interrupts a command (an output folder holding a user's file, a ``kill -9`` at a
chosen point, a half-written line, a garbage internal file) and then checks the three things a user
needs: the data that was there is intact, no process is left behind, and the next run succeeds (or
says in one line what is wrong, naming the file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from megatron_plm.data.corpus import Corpus, corpus_paths
from megatron_plm.data.preprocess import PreprocessConfig, preprocess
from megatron_plm.safe_io import DamagedFileError

OLD = b">sp|P1|A\nMKTAYIAKQRQISFVK\n>sp|P2|B\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n"
NEW = b">sp|Q1|C\nMAAAAAAAAK\n"


def make_corpus(tmp_path, prefix, content=OLD, **options):
    source = tmp_path / f"in-{abs(hash((str(prefix), content)))}.fasta"
    source.write_bytes(content)
    preprocess(PreprocessConfig(inputs=[str(source)], output_prefix=str(prefix), progress=False, **options))
    return prefix


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def run_python(script: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **kwargs,
    )


# ---- tokenizer train: writing a directory never removes what it did not write ---------------------------


def _train_tokenizer(tmp_path, output):
    from megatron_plm.data.subword import SubwordTrainConfig, train_subword_tokenizer

    fasta = tmp_path / "train.fasta"
    fasta.write_bytes(OLD * 4)
    return train_subword_tokenizer(
        SubwordTrainConfig(inputs=[str(fasta)], output=str(output), vocab_size=48, progress=False)
    )


def test_tokenizer_output_holding_a_users_file_is_refused_and_kept(tmp_path):
    output = tmp_path / "results"
    output.mkdir()
    (output / "results.csv").write_text("assay,spearman\nBLAT,0.61\n")
    with pytest.raises(FileExistsError, match=r"results already holds files this command does not write \(results\.csv\)"):
        _train_tokenizer(tmp_path, output)
    assert snapshot(output) == {"results.csv": b"assay,spearman\nBLAT,0.61\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "train.fasta"]  # no staging left


def test_tokenizer_output_replaces_an_earlier_tokenizer_only(tmp_path):
    from megatron_plm.data.subword import OUTPUT_FILES, SubwordTokenizer

    output = tmp_path / "tok"
    _train_tokenizer(tmp_path, output)
    _train_tokenizer(tmp_path, output)  # an earlier tokenizer is ours: replaced in place
    assert sorted(p.name for p in output.iterdir()) == sorted(OUTPUT_FILES)
    assert SubwordTokenizer.load(output).vocab_size == 48
    (tmp_path / "empty").mkdir()
    _train_tokenizer(tmp_path, tmp_path / "empty")  # an empty directory is fine too
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(OUTPUT_FILES)


def test_garbage_tokenizer_file_is_named(tmp_path):
    from megatron_plm.data.subword import SubwordTokenizer

    output = tmp_path / "tok"
    _train_tokenizer(tmp_path, output)
    (output / "tokenizer.json").write_text("garbage")
    with pytest.raises(DamagedFileError, match=r"tok/tokenizer\.json: .*; train the tokenizer again"):
        SubwordTokenizer.load(output)
    (output / "tokenizer.json").write_text("{}")
    with pytest.raises(DamagedFileError, match=r"tok/tokenizer\.json: "):
        SubwordTokenizer.load(output)
    (output / "tokenizer_meta.json").write_text('{"model_type": "bpe", "vocab')
    with pytest.raises(DamagedFileError, match=r"tok/tokenizer_meta\.json: not valid JSON"):
        SubwordTokenizer.load(output)


# ---- preprocess: recovery matches its own prefix exactly ---------------------------------------------------


def test_recovery_leaves_a_neighbouring_prefix_alone(tmp_path):
    data = tmp_path / "D"
    make_corpus(tmp_path, data / "uniref")
    make_corpus(tmp_path, data / "uniref.v2", NEW)
    # a run killed while replacing uniref.v2 (pid 2**22 + 1: above pid_max, never alive)
    stale = data / "uniref.v2.bin.previous-4194305"
    os.link(data / "uniref.v2.bin", stale)
    before = snapshot(data)
    bad = tmp_path / "bad.fasta"
    bad.write_text(">x\nMKJ\n")
    with pytest.raises(ValueError, match="invalid residue"):
        preprocess(PreprocessConfig(inputs=[str(bad)], output_prefix=str(data / "uniref"), overwrite=True, progress=False))
    assert snapshot(data) == before  # both corpora and the other prefix's leftover untouched
    assert Corpus.open(data / "uniref").record_ids() == ["sp|P1|A", "sp|P2|B"]
    assert Corpus.open(data / "uniref.v2").record_ids() == ["sp|Q1|C"]


def test_output_prefix_naming_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"--output-prefix '.*out/' names a directory"):
        make_corpus(tmp_path, str(tmp_path / "out") + "/")
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match=r"--output-prefix '.*dir' names a directory"):
        make_corpus(tmp_path, tmp_path / "dir")
    assert list((tmp_path / "dir").iterdir()) == []


KILL_AT = {
    # phase of preprocess -> code run in the child that SIGKILLs it there
    "encoding": "corpus.CorpusWriter.add = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)",
    "index": "corpus.CorpusWriter._write_index = lambda self, p: os.kill(os.getpid(), signal.SIGKILL)",
    "backup": """
link = os.link
def kill_after_first(src, dst):
    link(src, dst)
    os.kill(os.getpid(), signal.SIGKILL)
os.link = kill_after_first""",
    "swap": """
replace = os.replace
def kill_after_bin(src, dst):
    replace(src, dst)
    if str(dst).endswith('.bin'):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = kill_after_bin""",
    "after-idx": """
replace = os.replace
def kill_after_idx(src, dst):
    replace(src, dst)
    if str(dst).endswith('.idx'):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = kill_after_idx""",
}


@pytest.mark.parametrize("phase", KILL_AT)
def test_kill_at_each_phase_of_preprocess(tmp_path, phase, capsys):
    prefix = make_corpus(tmp_path, tmp_path / "D" / "c")
    make_corpus(tmp_path, tmp_path / "D" / "c.v2", NEW)  # a neighbour, never touched
    neighbour = {k: v for k, v in snapshot(tmp_path / "D").items() if k.startswith("c.v2.")}
    source = tmp_path / "new.fasta"
    source.write_bytes(NEW)
    script = f"""
import os, signal
import megatron_plm.data.corpus as corpus
from megatron_plm.data.preprocess import PreprocessConfig, preprocess
{KILL_AT[phase]}
preprocess(PreprocessConfig(inputs=[{str(source)!r}], output_prefix={str(prefix)!r}, progress=False, overwrite=True))
"""
    assert run_python(script).returncode == -9
    if phase == "swap":  # the kill came inside the swap: readers say where the old corpus is
        with pytest.raises(FileNotFoundError, match=r"c\.idx not found: a preprocess run \(pid \d+\) was killed while "
                           r"replacing the corpus at .*; the previous corpus is kept whole as .*c\.bin\.previous-\d+"):
            Corpus.open(prefix)
        with pytest.raises(FileExistsError, match=r"c\.\w+ exists: a corpus is already at"):
            make_corpus(tmp_path, prefix, NEW)  # without --overwrite: puts the old one back, then refuses
        assert "restored the corpus it was replacing (kept as c.bin.previous-" in capsys.readouterr().err
    expected = ["sp|Q1|C"] if phase == "after-idx" else ["sp|P1|A", "sp|P2|B"]
    assert Corpus.open(prefix).record_ids() == expected  # old data intact (or the finished new one)
    make_corpus(tmp_path, prefix, NEW, overwrite=True)  # the next run succeeds
    assert Corpus.open(prefix).record_ids() == ["sp|Q1|C"]
    left = sorted(p.name for p in (tmp_path / "D").iterdir())
    assert left == sorted([p.name for p in corpus_paths(prefix).values() if p.exists()] + list(neighbour))
    assert {k: v for k, v in snapshot(tmp_path / "D").items() if k.startswith("c.v2.")} == neighbour
