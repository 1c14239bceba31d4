"""The build's output directory, replaced atomically.

A build writes into `.NAME.building-<id>` beside `--out` and renames it into place at the end, so
`--out` holds either a complete build or what was there before. The builder holds an exclusive
`flock` on `.NAME.building-<id>.lock` for its whole life; the kernel drops that lock when the
process dies, however it dies (SIGKILL included). So the next build into the same parent removes
every temporary whose lock it can take (its builder is gone) and leaves alone those it cannot (a
build still running there).

`mkdtemp` creates 0700 directories; the finished root gets the mode a plain `mkdir` would give
under the user's umask, so a server running as another user can read the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
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
    """Remove the temporaries of builds that died in `parent`; return what was removed."""
    removed = []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        lock = parent / f".{match['name']}.building-{match['id']}.lock"
        with _try_lock(lock) as held:
            if held:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    for lock in parent.glob(".*.building-*.lock"):  # locks whose directories are gone
        if not lock.with_suffix("").exists():
            with _try_lock(lock) as held:
                if held:
                    lock.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def _try_lock(path: Path):
    """Yield True when the lock at `path` was free (or absent) and is now ours for the block."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


class BuildDirectory:
    """`with BuildDirectory(out) as work:` ... `work.commit()`; without commit the temporary is removed."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out).resolve()
        self.id = secrets.token_hex(8)
        self.path = self.out.parent / f".{self.out.name}.building-{self.id}"
        self._lock_path = self.out.parent / f".{self.out.name}.building-{self.id}.lock"
        self._lock_fd: int | None = None
        self.removed: list[Path] = []

    def __enter__(self) -> BuildDirectory:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.removed = remove_abandoned(self.out.parent)
        # Lock first, directory second: a temporary directory without a held lock is never live.
        self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.path.mkdir(mode=0o700)
        return self

    def commit(self) -> None:
        """Give the build root a plain directory's mode and swap it into place."""
        os.chmod(self.path, 0o777 & ~current_umask())
        replaced = None
        if self.out.exists():
            replaced = self.out.parent / f".{self.out.name}.replaced-{self.id}"
            self.out.rename(replaced)
        self.path.rename(self.out)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        if self.path.exists():  # not committed: an error stopped the build
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            self._lock_path.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None
