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

from conftest import REPO, run_python
from megatron_plm.data.corpus import Corpus, corpus_paths
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
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


# ---- tokenizer train: writing a directory never removes what it did not write ---------------------------


def _train_tokenizer(tmp_path, output):
    from megatron_plm.data.preprocess.tokenizer_training import SubwordTrainConfig, train_subword_tokenizer

    fasta = tmp_path / "train.fasta"
    fasta.write_bytes(OLD * 4)
    return train_subword_tokenizer(
        SubwordTrainConfig(inputs=[str(fasta)], output=str(output), vocab_size=48, progress=False)
    )


def test_tokenizer_output_holding_a_users_file_is_refused_and_kept(tmp_path):
    output = tmp_path / "results"
    output.mkdir()
    (output / "results.csv").write_text("assay,spearman\nBLAT,0.61\n")
    with pytest.raises(
        FileExistsError, match=r"results already holds files this command does not write \(results\.csv\)"
    ):
        _train_tokenizer(tmp_path, output)
    assert snapshot(output) == {"results.csv": b"assay,spearman\nBLAT,0.61\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "train.fasta"]  # no staging left


def test_tokenizer_output_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    from megatron_plm.data.preprocess import tokenizer_training

    (tmp_path / "file").write_text("x")
    trained = []
    monkeypatch.setattr(tokenizer_training, "_sentences", lambda *a: trained.append(1) or iter(()))
    with pytest.raises(ValueError, match=r"--output .*file/tok cannot be written \(.*\); choose another path"):
        _train_tokenizer(tmp_path, tmp_path / "file" / "tok")
    assert trained == []


def test_tokenizer_output_replaces_an_earlier_tokenizer_only(tmp_path):
    from megatron_plm.data.tokenizers.subword import OUTPUT_FILES, SubwordTokenizer

    output = tmp_path / "tok"
    _train_tokenizer(tmp_path, output)
    _train_tokenizer(tmp_path, output)  # an earlier tokenizer is ours: replaced in place
    assert sorted(p.name for p in output.iterdir()) == sorted(OUTPUT_FILES)
    assert SubwordTokenizer.load(output).vocab_size == 48
    (tmp_path / "empty").mkdir()
    _train_tokenizer(tmp_path, tmp_path / "empty")  # an empty directory is fine too
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(OUTPUT_FILES)


def test_garbage_tokenizer_file_is_named(tmp_path):
    from megatron_plm.data.tokenizers.subword import SubwordTokenizer

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
        preprocess(
            PreprocessConfig(inputs=[str(bad)], output_prefix=str(data / "uniref"), overwrite=True, progress=False)
        )
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


def _kill_after_replacing(suffix: str) -> str:
    """Child code: SIGKILL right after ``os.replace`` put a file ending in ``suffix`` in place."""
    return f"""
replace = os.replace
def kill_after(src, dst):
    replace(src, dst)
    if str(dst).endswith({suffix!r}):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = kill_after"""


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
    "swap": _kill_after_replacing(".bin"),
    "after-idx": _kill_after_replacing(".idx"),
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
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
{KILL_AT[phase]}
preprocess(PreprocessConfig(inputs=[{str(source)!r}], output_prefix={str(prefix)!r}, progress=False, overwrite=True))
"""
    assert run_python(script).returncode == -9
    if phase == "swap":  # the kill came inside the swap: readers say where the old corpus is
        with pytest.raises(
            FileNotFoundError,
            match=r"c\.idx not found: a preprocess run \(pid \d+\) was killed while "
            r"replacing the corpus at .*; the previous corpus is kept whole as .*c\.bin\.previous-\d+",
        ):
            Corpus.open(prefix)
        from megatron_plm.cli import main

        train = ["train", "--config", REPO / "examples/configs/tiny_clm.yaml", f"data.sources=[{{prefix: {prefix}}}]"]
        train.append(f"checkpoint.save={tmp_path / 'ck'}")
        assert main([str(a) for a in train]) == 2  # train says it too, in one line
        assert "the previous corpus is kept whole as" in capsys.readouterr().err
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


# ---- index cache: a kill during the build, a damaged manifest ----------------------------------------------


def _cache_script(directory, kill: bool) -> str:
    return f"""
import os, signal
import numpy as np
from megatron_plm.data.samples.index_cache import IndexCache, Role
def build():
    if {kill}:
        os.kill(os.getpid(), signal.SIGKILL)
    return {{"order": np.arange(1000, dtype=np.int64)}}
arrays = IndexCache({str(directory)!r}, role=Role()).get("order", {{"n": 1000}}, build)
assert arrays["order"].sum() == 499500
"""


def test_kill_during_a_cache_build(tmp_path):
    cache = tmp_path / "cache"
    assert run_python(_cache_script(cache, kill=True)).returncode == -9
    assert [".tmp-" in p.name for p in cache.iterdir()] == [True]  # the killed builder's staging, nothing else
    done = run_python(_cache_script(cache, kill=False))  # the next run builds and reads it
    assert done.returncode == 0, done.stderr
    (entry,) = cache.iterdir()  # and removed the abandoned staging
    assert entry.name.startswith("order-") and ".tmp-" not in entry.name


def test_kill_while_a_damaged_cache_entry_is_moved_aside(tmp_path):
    cache = tmp_path / "cache"
    assert run_python(_cache_script(cache, kill=False)).returncode == 0
    (entry,) = cache.iterdir()
    (entry / "manifest.json").write_text("{}")  # damaged: the next build moves it aside, then is killed
    script = _cache_script(cache, kill=False).replace(
        "arrays = IndexCache",
        "import shutil\nshutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\narrays = IndexCache",
    )
    assert run_python(script).returncode == -9
    assert any(".bad-" in p.name for p in cache.iterdir())
    assert run_python(_cache_script(cache, kill=False)).returncode == 0  # the next run succeeds
    assert [p.name for p in cache.iterdir()] == [entry.name]  # and removed what the killed one left


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: {k: v for k, v in m.items() if k != "files"},
        lambda m: {**m, "files": {"order": 7}},
        lambda m: {**m, "files": {"order": {"bytes": "x"}}},
        lambda m: {**m, "files": {}},
        lambda m: [m],
    ],
    ids=["no-files", "entry-not-an-object", "entry-without-numbers", "empty-files", "not-an-object"],
)
def test_damaged_cache_manifest_is_rebuilt(tmp_path, damage):
    import numpy as np

    from megatron_plm.data.samples.index_cache import IndexCache, Role

    cache = IndexCache(tmp_path, role=Role())
    build = lambda: {"order": np.arange(10)}  # noqa: E731
    cache.get("order", {"n": 10}, build)
    manifest = cache.entry("order", {"n": 10}) / "manifest.json"
    manifest.write_text(json.dumps(damage(json.loads(manifest.read_text()))))
    again = IndexCache(tmp_path, role=Role())
    assert list(again.get("order", {"n": 10}, build)["order"]) == list(range(10))
    assert again.built == [again.entry("order", {"n": 10})]


# ---- train: metrics.jsonl, the final save, orphans ------------------------------------------------------------


def _small_run(corpus, save) -> list[str]:
    """Overrides of the tiny CLM for a three-step run of short samples saving to ``save``."""
    return [
        f"data.sources=[{{prefix: {corpus}}}]",
        f"checkpoint.save={save}",
        "data.seq_length=64",
        "training.global_batch_size=4",
        "training.micro_batch_size=4",
        "training.eval_interval=0",
        "training.eval_iters=1",
        "training.train_iters=3",
        "logging.log_interval=100",
    ]


def _small(corpus, save, *overrides):
    from megatron_plm.training.config import load_config

    return load_config(REPO / "examples/configs/tiny_clm.yaml", [*_small_run(corpus, save), *overrides])


def _train(config):
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.training.trainer import train

    with initialize(config.parallel, seed=config.training.seed) as runtime:
        return train(config, runtime)


def test_half_written_metrics_line_does_not_block_resume(sample_corpus, tmp_path, capsys):
    from megatron_plm.training.metrics import read_metrics

    save = tmp_path / "run"
    _train(_small(sample_corpus, save, "training.exit_interval=2", "training.train_iters=3"))
    metrics = save / "metrics.jsonl"
    damaged = len(metrics.read_bytes().splitlines()) + 1
    with open(metrics, "ab") as handle:  # a launch killed while writing step 3's line
        handle.write(b'{"kind": "train", "step": 3, "loss": 2.9, "lr": "\xc3')

    def steps(entries):
        return [e["step"] for e in entries if e.get("kind") != "launch"]  # launches are recorded too

    assert steps(read_metrics(save)) == [1, 2]  # plot reads it too (a warning names the line)
    assert f"metrics.jsonl:{damaged}: a half-written last line" in capsys.readouterr().err
    resumed = _train(_small(sample_corpus, save, "training.train_iters=3"))
    assert [h["step"] for h in resumed.history] == [3]
    lines = metrics.read_bytes().split(b"\n")
    assert lines[-1] == b"" and steps(json.loads(line) for line in lines[:-1]) == [1, 2, 3, 3]  # train, valid


def test_plot_of_an_empty_metrics_file_is_refused(tmp_path):
    from megatron_plm.training.curves import plot_runs

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"run/metrics\.jsonl holds no training or validation steps"):
        plot_runs([tmp_path / "run"], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("where", ["validation", "save"])
def test_sigterm_during_the_final_validation_or_save(sample_corpus, tmp_path, monkeypatch, where):
    import signal

    from megatron_plm.checkpoint.distributed import latest_checkpoint
    from megatron_plm.training import trainer

    target = trainer.Checkpointer.save if where == "save" else trainer.Validator.__call__

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the final validation / save runs
        return target(*args, **kwargs)

    if where == "save":
        monkeypatch.setattr(trainer.Checkpointer, "save", signalled)
    else:
        monkeypatch.setattr(trainer.Validator, "__call__", signalled)
    save = tmp_path / "run"
    result = _train(_small(sample_corpus, save))
    assert result.stopped_by == "SIGTERM" and result.iterations == 3  # the CLI exits 75 on stopped_by
    assert latest_checkpoint(save).name == "iter_0000003"
    assert not list(save.glob("*.tmp-*"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _session_processes(session: int) -> list[int]:
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":  # field 6 of stat: the session id
                found.append(int(stat))
    return found


def _left_alive(session: int, seconds: float = 10.0) -> list[int]:
    """The processes of ``session`` still alive after giving a parent-death signal ``seconds`` to land."""
    import time

    deadline = time.time() + seconds
    while _session_processes(session) and time.time() < deadline:
        time.sleep(0.1)
    return _session_processes(session)


@pytest.mark.slow
def test_kill_9_during_a_save_leaves_no_process(sample_corpus, tmp_path):
    import signal
    import time

    from conftest import train_command

    save = tmp_path / "ckpt"
    command = train_command(
        f"data.sources=[{{prefix: {sample_corpus}}}]",
        f"checkpoint.save={save}",
        "checkpoint.save_interval=1",
        "training.train_iters=200",
        "training.eval_interval=0",
        "logging.log_interval=100",
    )
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if (save / "latest").exists() and list(save.glob("iter_*.tmp-*")):
                break  # the second save (or later) is in progress: megatron-core's workers are up
            time.sleep(0.005)
        else:
            pytest.fail("never caught the run during a save")
        os.kill(process.pid, signal.SIGKILL)  # the trainer only, as the OOM killer or a scheduler would
        process.wait(timeout=30)
        assert _left_alive(process.pid) == []  # no writer, Manager or resource_tracker left
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def test_full_disk_or_read_only_folder_during_preprocess(tmp_path, monkeypatch, capsys):
    import errno

    from megatron_plm.cli import main
    from megatron_plm.data import corpus

    prefix = make_corpus(tmp_path, tmp_path / "D" / "c")
    before = snapshot(tmp_path / "D")
    source = tmp_path / "new.fasta"
    source.write_bytes(NEW)
    add = corpus.CorpusWriter.add

    def full(self, *args):
        add(self, *args)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(corpus.CorpusWriter, "add", corpus._output_errors(full))
    argv = ["preprocess", "--input", str(source), "--output-prefix", str(prefix), "--overwrite", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"megatron-plm preprocess: error: cannot write the corpus at {prefix}: No space left on device; free space "
        "or choose a writable --output-prefix (what was at the prefix is kept)"
    ]
    assert snapshot(tmp_path / "D") == before
    monkeypatch.undo()

    real_open = open

    def read_only(path, mode="r", *args, **kwargs):  # as in a folder mounted read-only (root ignores chmod)
        if "w" in mode and ".tmp-" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot write the corpus at {prefix}: Read-only file system ({prefix}.bin.tmp-" in line
    assert snapshot(tmp_path / "D") == before


def test_sigterm_during_preprocess_is_one_line(tmp_path):
    prefix = make_corpus(tmp_path, tmp_path / "D" / "c")
    before = snapshot(tmp_path / "D")
    source = tmp_path / "new.fasta"
    source.write_bytes(NEW)
    script = f"""
import os, signal, sys
import megatron_plm.data.corpus as corpus
from megatron_plm.cli import main
add = corpus.CorpusWriter.add
def add_then_terminated(self, *args):
    add(self, *args)
    os.kill(os.getpid(), signal.SIGTERM)
corpus.CorpusWriter.add = add_then_terminated
sys.exit(main(["preprocess", "--input", {str(source)!r}, "--output-prefix", {str(prefix)!r}, "--overwrite"]))
"""
    done = run_python(script)
    assert done.returncode == 128 + 15 and "Traceback" not in done.stderr
    assert "megatron-plm preprocess: interrupted by SIGTERM; its temporary files were removed" in done.stderr
    assert snapshot(tmp_path / "D") == before


def test_repeated_record_ids_are_reported(tmp_path, capsys):
    from megatron_plm.cli import main

    source = tmp_path / "dup.fasta"
    source.write_bytes(b">a\nMKT\n>b\nMKV\n>a\nMKW\n>c\nMKY\n>b\nMKL\n>a\nMKI\n")
    prefix = tmp_path / "D" / "c"
    assert main(["preprocess", "--input", str(source), "--output-prefix", str(prefix), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "repeated ids       3 documents reuse an earlier record id (first: 'a')" in captured.out
    assert "warning: 3 documents reuse an earlier record id (first: 'a')" in captured.err
    meta = Corpus.open(prefix).meta["summary"]
    assert (meta["repeated_ids"], meta["first_repeated_id"]) == (3, "a")
    make_corpus(tmp_path, tmp_path / "D" / "unique")
    assert Corpus.open(tmp_path / "D" / "unique").meta["summary"]["repeated_ids"] == 0


def test_kill_9_of_preprocess_takes_its_worker_processes(tmp_path, real_fasta):
    import signal

    prefix = make_corpus(tmp_path, tmp_path / "D" / "c")
    before = snapshot(tmp_path / "D")
    script = f"""
import os, signal
import megatron_plm.data.corpus as corpus
from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess
add = corpus.CorpusWriter.add
def add_then_kill(self, *args):
    add(self, *args)
    os.kill(os.getpid(), signal.SIGKILL)  # while the pool's workers encode the next chunks
corpus.CorpusWriter.add = add_then_kill
preprocess(PreprocessConfig(inputs=[{str(real_fasta)!r}], output_prefix={str(prefix)!r}, implementation="reference",
                            workers=2, chunk_bytes=4096, progress=False, overwrite=True))
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert process.wait(timeout=120) == -9
        assert _left_alive(process.pid) == []  # the pool's workers died with it
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert Corpus.open(prefix).record_ids() == ["sp|P1|A", "sp|P2|B"]  # old data intact
    make_corpus(tmp_path, prefix, real_fasta.read_bytes(), overwrite=True, workers=2, implementation="reference")
    assert len(Corpus.open(prefix)) == 500  # the next run succeeds
    assert sorted(snapshot(tmp_path / "D")) == sorted(before)  # and leaves nothing else behind


def test_sigterm_during_tokenizer_train_keeps_the_earlier_tokenizer(tmp_path):
    output = tmp_path / "tok"
    _train_tokenizer(tmp_path, output)
    before = snapshot(output)
    script = f"""
import os, signal, sys
import megatron_plm.data.preprocess.tokenizer_training as subword
from megatron_plm.cli import main
feed = subword._feed
def terminated(*args):  # while SentencePiece reads the sequences
    for i, sentence in enumerate(feed(*args)):
        if i == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        yield sentence
subword._feed = terminated
sys.exit(main(["tokenizer", "train", "--input", {str(tmp_path / "train.fasta")!r}, "--output", {str(output)!r},
               "--vocab-size", "48", "--no-progress"]))
"""
    done = run_python(script)
    assert done.returncode == 128 + 15 and "Traceback" not in done.stderr, done.stderr
    assert "megatron-plm tokenizer: interrupted by SIGTERM" in done.stderr
    assert snapshot(output) == before
    writing = script.replace(
        "subword._feed = terminated", "subword.publish_directory = lambda *a: os.kill(os.getpid(), 15)"
    )
    done = run_python(writing)  # SIGTERM while the new files are staged: the staging is removed
    assert done.returncode == 128 + 15 and "Traceback" not in done.stderr, done.stderr
    assert snapshot(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok", "train.fasta"]  # no staging directory left


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("source", lambda p: p.write_bytes(b"garbage"), r"c\.source\.npy: .*; rerun preprocess"),
        ("source", lambda p: p.write_bytes(p.read_bytes()[:-2]), r"c\.source\.npy: .*; rerun preprocess"),
        ("cluster", lambda p: p.write_bytes(p.read_bytes()[:-8]), r"c\.cluster\.npy: .*; rerun preprocess"),
        ("ids", lambda p: p.write_bytes(b"\xff\xfe\n"), r"c\.ids\.txt: is not UTF-8 text"),
        ("ids", lambda p: p.write_text("only-one\n"), r"c\.ids\.txt: 1 ids for 2 documents"),
        ("clusters", lambda p: p.write_text(""), r"c\.cluster\.npy: cluster index 1, but .*c\.clusters\.txt names 0"),
    ],
)
def test_damaged_corpus_column_is_named(tmp_path, name, damage, message):
    from megatron_plm.data.samples.splits import assign_splits

    clusters = tmp_path / "clusters.tsv"
    clusters.write_text("sp|P1|A\tsp|P1|A\nsp|P2|B\tsp|P2|B\n")
    prefix = make_corpus(tmp_path, tmp_path / "D" / "c", clusters=str(clusters))
    damage(corpus_paths(prefix)[name])
    corpus = Corpus.open(prefix)
    read = {
        "source": corpus.source_index,
        "ids": corpus.record_ids,
        "cluster": lambda: assign_splits(corpus, (1, 0, 0)),
        "clusters": lambda: assign_splits(corpus, (1, 0, 0)),
    }[name]
    with pytest.raises(DamagedFileError, match=message):
        read()


SAVE_PHASES = {
    # phase of the second save -> (function of checkpoint.distributed to wrap, kill before calling it)
    "before-manifest": "write_manifest",  # every shard written, nothing renamed
    "before-latest": "os_replace_latest",  # iter_0000002 complete, latest still names iter_0000001
    "pruning": "_prune",  # latest names iter_0000002, old checkpoints not yet removed
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", SAVE_PHASES)
def test_kill_9_at_each_phase_of_a_save(sample_corpus, tmp_path, phase):
    import signal

    from megatron_plm.checkpoint.distributed import latest_checkpoint

    save = tmp_path / "run"
    overrides = [*_small_run(sample_corpus, save), "checkpoint.save_interval=1", "checkpoint.keep_last=1"]
    target = SAVE_PHASES[phase]
    script = f"""
import os, signal, sys
import megatron_plm.checkpoint.distributed as ckpt
from megatron_plm.cli import main
calls = []
def kill_on_second(function):
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)
    return wrapper
if {target!r} == "os_replace_latest":
    replace = os.replace
    def replace_latest(src, dst):
        if os.path.basename(dst) == "latest":
            return kill_on_second(replace)(src, dst)
        return replace(src, dst)
    ckpt.os.replace = replace_latest
else:
    setattr(ckpt, {target!r}, kill_on_second(getattr(ckpt, {target!r})))
sys.exit(main(["train", "--config", {str(REPO / "examples/configs/tiny_clm.yaml")!r}, *{overrides!r}]))
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert process.wait(timeout=300) == -9
        assert _left_alive(process.pid) == []  # no writer, Manager or resource_tracker left
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    expected = "iter_0000002" if phase == "pruning" else "iter_0000001"
    assert latest_checkpoint(save).name == expected  # the newest complete checkpoint, loadable
    from megatron_plm.training.config import load_config

    resumed = _train(load_config(REPO / "examples/configs/tiny_clm.yaml", overrides))
    assert [h["step"] for h in resumed.history] == list(range(int(expected[-1]) + 1, 4))  # the next run succeeds
    assert sorted(p.name for p in save.iterdir()) == ["config.yaml", "iter_0000003", "latest", "metrics.jsonl"]
