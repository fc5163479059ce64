"""datakit.outputs.OutputFiles: outputs opened before the work, renamed together, flushed first;
nothing under a final name, no temporary and no folder it made left by a failure or a signal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from datakit.errors import DatakitError
from datakit.outputs import OutputFiles


def test_outputs_appear_together_when_the_work_succeeds(tmp_path: Path) -> None:
    a, b = tmp_path / "new" / "a.png", tmp_path / "b.html"
    with OutputFiles([str(a), str(b)]) as out:
        assert not a.exists() and not b.exists()  # only temporaries while the work runs
        out.write(str(a), b"png")
        out.write_with(str(b), lambda f: f.write(b"html"))
    assert a.read_bytes() == b"png" and b.read_bytes() == b"html"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.png", "b.html", "new"]
    assert (a.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("failure", [RuntimeError("the work failed"), KeyboardInterrupt()])
def test_a_failure_leaves_no_output_temporary_or_folder_and_keeps_the_old_file(
    tmp_path: Path, failure: BaseException
) -> None:
    old = tmp_path / "e.json"
    old.write_text("old\n")
    with pytest.raises(type(failure)), OutputFiles([str(old), str(tmp_path / "x" / "y" / "b")]):
        raise failure
    assert old.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["e.json"]


def test_an_unwritable_output_fails_on_entry_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    entered = False
    with (
        pytest.raises(DatakitError) as raised,
        OutputFiles([str(tmp_path / "ok" / "a"), str(blocker / "b")]),
    ):
        entered = True
    assert not entered
    assert str(raised.value) == f"{blocker / 'b'}: cannot be written ({blocker} is not a folder)"
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # "ok" made for a, then removed
    with pytest.raises(DatakitError, match="is a folder; give a file name"):
        OutputFiles([str(tmp_path)]).__enter__()


def test_each_output_is_flushed_to_disk_before_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the rename cannot leave a renamed but empty file: a full disk seen at the
    fsync is one error naming the output, and the old file stays."""
    out = tmp_path / "e.json"
    out.write_text("old\n")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(DatakitError) as raised, OutputFiles([str(out)]) as files:
        files.write(str(out), b"new\n")
    assert str(raised.value) == f"{out}: cannot be written (No space left on device)"
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["e.json"]


def test_a_signal_while_temporaries_are_made_leaves_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C (SIGINT) that lands right after a temporary file is created, before __enter__
    returns, still removes it: each temporary is recorded before it is made."""
    real_close = os.close
    calls = []

    def close_then_interrupt(fd: int) -> None:
        real_close(fd)
        calls.append(fd)
        os.kill(os.getpid(), signal.SIGINT)  # raised as KeyboardInterrupt at the next bytecode

    monkeypatch.setattr(os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt), OutputFiles([str(tmp_path / "a")]):
        pass
    monkeypatch.undo()
    assert calls and list(tmp_path.iterdir()) == []
