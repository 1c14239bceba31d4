"""Start the `tritonserver` that nvidia-pytriton ships (server 2.51, python backend) on loopback.

The two set-up steps that binary needs are done here, without touching site-packages: a backend
directory in the user cache holds links to pytriton's python backend plus the stub for this
Python version, and the wheel's bundled libraries go on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from onerank_export.errors import StageError

LOOPBACK = "127.0.0.1"


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError:
        raise StageError("nvidia-pytriton is not installed (it provides tritonserver); "
                         "run `pip install -e .` in the onerank-export checkout") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def backend_directory(cache: Path | None = None) -> Path:
    """A backends/ dir with pytriton's python backend and the stub for this interpreter's version."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise StageError(f"nvidia-pytriton has no python backend stub for Python {version}; "
                         "use Python 3.8-3.13")
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onerank-export"
    target = cache / "tritonserver-backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = {p.name: p for p in (root / "backends" / "python").iterdir() if p.is_file()}
    sources[stub.name] = stub
    for name, source in sources.items():
        link = target / name
        if link.is_symlink() and link.resolve() == source.resolve():
            continue
        tmp = target / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source)
        os.replace(tmp, link)  # atomic: concurrent starts never see a half-made backend
    return target.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver process on loopback; a context manager that waits for readiness and stops it."""

    def __init__(self, repository: Path, http_port: int | None = None, grpc_port: int | None = None,
                 log_file: Path | None = None, startup_timeout: float = 120.0) -> None:
        self.repository = Path(repository).resolve()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.startup_timeout = startup_timeout
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def command(self) -> list[str]:
        binary = pytriton_root() / "bin" / "tritonserver"
        return [str(binary), "--model-repository", str(self.repository),
                "--backend-directory", str(backend_directory()),
                "--http-address", LOOPBACK, "--http-port", str(self.http_port),
                "--grpc-address", LOOPBACK, "--grpc-port", str(self.grpc_port),
                "--allow-metrics", "false", "--strict-readiness", "true", "--exit-on-error", "true"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = pytriton_root().parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH")) if p)
        # The stub's interpreter ignores PYTHONPATH and site-packages; model.py adds these paths
        # so it imports numpy, onnxruntime and onerank_export from this environment.
        env["ONERANK_PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
        return env

    def start(self) -> TritonServer:
        if not self.repository.is_dir():
            raise StageError(f"{self.repository}: model repository not found; run `onerank-export build` first")
        if self.log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_file = Path(name)
        self._log_handle = open(self.log_file, "wb")  # noqa: SIM115 - lives as long as the server
        self.process = subprocess.Popen(self.command(), stdout=self._log_handle, stderr=subprocess.STDOUT,
                                        env=self.environment(), start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(f"tritonserver exited with code {self.process.returncode} while loading "
                                 f"{self.repository}: {self.last_error()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise StageError(f"tritonserver not ready after {self.startup_timeout:.0f} s; see {self.log_file}")

    def last_error(self) -> str:
        """The most telling line of the server log (first error, else the last line)."""
        lines = [ln.strip() for ln in self.log_file.read_text(errors="replace").splitlines() if ln.strip()]
        # No-GPU start-up noise is not the reason a model failed.
        noise = ("CudaDriverHelper", "pinned memory", "CUDA driver")
        load = [ln for ln in lines if "failed to load" in ln]
        errors = [ln for ln in lines if ln.startswith("E") and not any(n in ln for n in noise)]
        line = (load or errors or lines or ["no output"])[0]
        return f"{line[:300]} (log: {self.log_file})"

    def pids(self) -> list[int]:
        """The server and its python-backend stub processes (for memory accounting)."""
        if self.process is None:
            return []
        out = [self.process.pid]
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:  # ppid
                out.append(int(status.parent.name))
        return out

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def resolve_repository(path: Path) -> Path:
    """A build dir serves its CPU repository; a repository dir serves itself."""
    from onerank_export.serving.repository import CPU_DIR

    path = Path(path)
    if (path / "manifest.json").is_file() and (path / CPU_DIR).is_dir():
        return path / CPU_DIR
    if not path.is_dir():
        raise StageError(f"{path}: not a directory; pass a build dir or a model repository")
    models = [p for p in path.iterdir() if (p / "config.pbtxt").is_file()]
    if not models:
        raise StageError(f"{path}: no model directories with config.pbtxt; pass a build dir or a model repository")
    _check_backends(models)
    return path


def _check_backends(models: list[Path]) -> None:
    from onerank_export.serving.model_config import read_config

    for model in sorted(models):
        cfg = read_config(model / "config.pbtxt")
        if cfg.backend != "python":
            kind = cfg.platform or cfg.backend
            raise StageError(f"{model.name}: needs the {kind} backend, which the bundled tritonserver lacks "
                             "(python backend only); serve the build's model_repository_cpu here, or this "
                             "repository with NVIDIA's Triton container")
