"""Progress reporting and output paths: lines in logs, no bar spam; outputs checked before the work."""

from __future__ import annotations

import io
import os
import time

import pytest

from megatron_plm.outputs import prepare_output, write_text_atomic
from megatron_plm.progress import Progress, track


def test_progress_writes_periodic_lines_when_not_a_terminal():
    stream = io.StringIO()
    with Progress(4, "scoring", unit="rows", stream=stream, interval=0.0) as progress:
        for _ in range(4):
            progress.update(1)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("scoring: 1/4 rows (25%) in ") and lines[-1].startswith("scoring: 4/4 rows (100%)")
    assert len(lines) == 5  # one per update and a final one


def test_progress_is_quiet_for_short_work_and_when_disabled():
    stream = io.StringIO()
    with Progress(3, "quick", stream=stream, interval=60.0) as progress:
        progress.update(3)
    with Progress(3, "off", stream=stream, interval=0.0, enabled=False) as progress:
        progress.update(3)
    assert stream.getvalue() == ""
    assert list(track(range(3), "items", enabled=False)) == [0, 1, 2]


def test_output_parents_are_created_and_unwritable_paths_refused(tmp_path):
    target = prepare_output(tmp_path / "new" / "deeper" / "scores.csv")
    assert target.parent.is_dir() and not target.exists() and not list(target.parent.iterdir())
    with pytest.raises(ValueError, match="is a directory"):
        prepare_output(tmp_path / "new")
    (tmp_path / "plain-file").write_text("")  # a parent that is a file: unwritable even for root
    with pytest.raises(ValueError, match=r"plain-file/x\.csv cannot be written"):
        prepare_output(tmp_path / "plain-file" / "x.csv")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # (root writes anywhere)
            with pytest.raises(ValueError, match=r"locked/x\.csv cannot be written"):
                prepare_output(locked / "x.csv")
    finally:
        locked.chmod(0o700)
    write_text_atomic(tmp_path / "a" / "b.txt", "hello\n")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello\n" and len(list((tmp_path / "a").iterdir())) == 1


def test_evaluate_refuses_an_unwritable_output_before_loading_the_model(tmp_path, capsys):
    from megatron_plm.cli import main

    (tmp_path / "file").write_text("")
    started = time.monotonic()
    # The model path does not exist: had the output been checked after loading, this error would differ.
    assert (
        main(
            [
                "evaluate",
                "perplexity",
                "--model",
                str(tmp_path / "no-model"),
                "--fasta",
                "x.fasta",
                "--output",
                str(tmp_path / "file" / "per_seq.csv"),
            ]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "--output" in error and "per_seq.csv cannot be written" in error, error
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    """Staged-then-renamed outputs get the permissions of a plain ``open()``, not ``mkstemp``'s owner-only 0600."""
    previous = os.umask(umask)
    try:
        written = write_text_atomic(tmp_path / "scores.csv", "a,b\n")
    finally:
        os.umask(previous)
    assert oct(written.stat().st_mode & 0o777) == oct(mode)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
