"""The output directory: the finished root follows the umask, and temporaries of dead builds are
cleaned by the next build into the same parent while a running build's temporary is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from onerank_export.errors import OneRankError
from onerank_export.pipeline.workdir import BuildDirectory, check_output_dir, remove_abandoned


@pytest.fixture
def umask():
    old = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700), (0o002, 0o775)])
def test_the_finished_root_gets_the_mode_of_a_plain_mkdir(tmp_path, umask, mask, mode):
    umask(mask)
    with BuildDirectory(tmp_path / "build") as work:
        assert (work.path.stat().st_mode & 0o777) == 0o700  # private while it is being written
        (work.path / "manifest.json").write_text("{}")
        work.commit()
    assert ((tmp_path / "build").stat().st_mode & 0o777) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_an_uncommitted_build_leaves_nothing_and_keeps_the_previous_one(tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError), BuildDirectory(out) as work:
        (work.path / "manifest.json").write_text("new")
        raise RuntimeError("a stage crashed")
    assert (out / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def _start_builder(parent, *, then: str):
    """A real process that opens a BuildDirectory in `parent`, prints its path, then runs `then`."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from onerank_export.pipeline.workdir import BuildDirectory
        work = BuildDirectory(Path({str(parent / "build")!r})).__enter__()
        (work.path / "half-written.onnx").write_bytes(b"x" * 1000)
        print(work.path, flush=True)
        {then}
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_killed_builds_temporary_is_removed_by_the_next_build(tmp_path):
    proc, path = _start_builder(tmp_path, then="os.kill(os.getpid(), signal.SIGKILL)")
    assert proc.wait(timeout=60) == -signal.SIGKILL
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.startswith(".build.building-") and not name.endswith(".lock") for name in leftovers), leftovers
    with BuildDirectory(tmp_path / "build") as work:
        assert [str(p) for p in work.removed] == [path]
        work.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_a_running_builds_temporary_is_left_alone(tmp_path):
    proc, path = _start_builder(tmp_path, then="sys.stdin.read()")  # holds its lock until stdin closes
    try:
        assert remove_abandoned(tmp_path) == []
        with BuildDirectory(tmp_path / "build") as work:
            assert work.removed == []
            work.commit()
        assert os.path.isdir(path) and os.path.isfile(os.path.join(path, "half-written.onnx"))
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    # Once that builder is gone (it exited without committing), its temporary is abandoned too.
    assert [str(p) for p in remove_abandoned(tmp_path)] == [path]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_output_dir_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OneRankError, match="exists and is a file"):
        check_output_dir(tmp_path / "file", force=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(OneRankError, match="pass --force"):
        check_output_dir(tmp_path / "mine", force=False)
    check_output_dir(tmp_path / "mine", force=True)
    check_output_dir(tmp_path / "new", force=False)


def test_a_lock_unlinked_by_a_cleaner_before_it_was_taken_is_made_again(tmp_path, monkeypatch):
    """The window between creating the lock file and locking it: a cleaner may take and unlink it.
    The builder must end up holding the lock on the file that is at the path, not on an orphan."""
    import fcntl

    from onerank_export.pipeline import workdir

    real_flock, calls = fcntl.flock, []

    def flock_after_a_cleaner(fd, op):
        calls.append(op)
        if len(calls) == 1:  # the cleaner wins the race once
            (tmp_path / ".build.building-0123456789abcdef.lock").unlink()
        return real_flock(fd, op)

    monkeypatch.setattr(workdir.fcntl, "flock", flock_after_a_cleaner)
    lock = tmp_path / ".build.building-0123456789abcdef.lock"
    fd = workdir._hold_lock(lock)
    try:
        assert len(calls) == 2 and os.fstat(fd).st_ino == os.stat(lock).st_ino
    finally:
        os.close(fd)


def test_a_failed_swap_puts_the_previous_build_back(tmp_path, monkeypatch):
    out = tmp_path / "build"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    real_rename = type(out).rename

    def rename(self, target):
        if ".building-" in self.name:
            raise OSError("simulated: the filesystem refused the rename")
        return real_rename(self, target)

    monkeypatch.setattr(type(out), "rename", rename)
    with pytest.raises(OSError, match="simulated"), BuildDirectory(out) as work:
        (work.path / "manifest.json").write_text("new")
        work.commit()
    assert (out / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]
