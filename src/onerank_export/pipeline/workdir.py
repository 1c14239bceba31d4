"""The build's output directory, replaced atomically.

A build writes into `.NAME.building-<id>` beside `--out` and renames it into place at the end, so
`--out` holds either a complete build or what was there before. The builder holds an exclusive
`flock` on `.NAME.building-<id>.lock` for its whole life; the kernel drops that lock when the
process dies, however it dies (SIGKILL included). So the next build into the same parent removes
every temporary whose lock it can take (its builder is gone) and leaves alone those it cannot (a
build still running there).

The temporary is created 0700 (nobody reads a half-written build); the finished root gets the
mode a plain `mkdir` would give under the user's umask, so a server running as another user can
read the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from onerank_export.errors import OneRankError
from onerank_export.io import current_umask

MANIFEST = "manifest.json"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>building|replaced)-(?P<id>[0-9a-f]{16})$")


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to replace a directory that is not an earlier build unless --force is given."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OneRankError(f"--out {out}: exists and is a file; choose a directory path")
    if force or not any(out.iterdir()) or (out / MANIFEST).is_file():
        return
    raise OneRankError(f"--out {out}: directory exists, is not empty and holds no onerank-export build "
                       f"(no {MANIFEST}); choose another directory or pass --force to replace it")


def remove_abandoned(parent: Path) -> list[Path]:
    """Remove the temporaries of builds that died in `parent`; return what is gone."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        # A builder creates its directory only once it holds the lock, so a missing lock means a dead one.
        with _try_lock(_lock_path(parent, match["name"], match["id"])) as free:
            if free:
                shutil.rmtree(entry, ignore_errors=True)  # another user's temporary may not be ours to remove
                if not entry.exists():
                    removed.append(entry)
    for lock in sorted(parent.glob(".*.building-*.lock")):  # locks whose directories are gone
        if not lock.with_suffix("").exists():
            with _try_lock(lock) as free:
                if free:
                    lock.unlink(missing_ok=True)
    return removed


def _lock_path(parent: Path, name: str, build_id: str) -> Path:
    return parent / f".{name}.building-{build_id}.lock"


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    """Yield True when no live builder holds the lock at `path` (or there is none); the lock is then
    ours for the block. A lock file we may not open belongs to another user: never ours to clean."""
    try:
        fd = os.open(path, os.O_RDONLY)  # flock works on a read-only descriptor
    except FileNotFoundError:
        yield True
        return
    except PermissionError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        yield False
        return
    try:
        yield _same_file(fd, path)  # else a builder replaced it meanwhile: it is live
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _hold_lock(path: Path) -> int:
    """An exclusive flock on the lock file at `path`. A cleaner that saw the file before we locked it
    may have unlinked it; then we hold a lock on a file nobody can see, so we make a new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            return fd
        os.close(fd)


class BuildDirectory:
    """`with BuildDirectory(out) as work:` ... `work.commit()`; without commit the temporary is removed."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out).resolve()
        self.id = secrets.token_hex(8)
        self.path = self.out.parent / f".{self.out.name}.building-{self.id}"
        self._lock_path = _lock_path(self.out.parent, self.out.name, self.id)
        self._lock_fd: int | None = None
        self.removed: list[Path] = []

    def __enter__(self) -> BuildDirectory:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.removed = remove_abandoned(self.out.parent)
        # Lock first, directory second: a temporary directory without a held lock is never live.
        self._lock_fd = _hold_lock(self._lock_path)
        self.path.mkdir(mode=0o700)
        return self

    def commit(self) -> None:
        """Give the build root a plain directory's mode and swap it into place."""
        os.chmod(self.path, 0o777 & ~current_umask())
        replaced = None
        if self.out.exists():
            replaced = self.out.parent / f".{self.out.name}.replaced-{self.id}"
            self.out.rename(replaced)
        try:
            self.path.rename(self.out)
        except OSError:
            if replaced is not None:  # put the previous build back: never lose it to a failed swap
                replaced.rename(self.out)
            raise
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        if self.path.exists():  # not committed: an error stopped the build
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            self._lock_path.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None
