"""Files: atomic writes and hashing, the one implementation every stage and command uses.

A reader never sees half a file: content goes to a temporary sibling (same directory, so the
rename stays on one filesystem) and `os.replace` puts it in place; on any error the temporary
is removed and the previous file, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path`.

    For writers that insist on a file name (onnx.save, TensorRT, compilers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; the finished file gets what a plain open() would give.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; when the block succeeds it replaces `path`
    (a directory a reader sees is complete or absent). For one writer at a time: the build output,
    with its concurrent builders and crash cleanup, has its own (pipeline/workdir.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any, *, indent: int = 2, sort_keys: bool = False,
               allow_nan: bool = True) -> Path:
    """JSON with a trailing newline; `default=str` so Paths and enums serialise as text."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan,
                                       default=str) + "\n")


def sha256_file(path: str | Path) -> str:
    return sha256_files([path])


def sha256_files(paths) -> str:
    """One sha256 over the files' bytes in order, streamed (a checkpoint's weights are gigabytes at 10^7 rows)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def current_umask() -> int:
    """The process umask: from /proc (Linux), else by setting and restoring it (briefly process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
