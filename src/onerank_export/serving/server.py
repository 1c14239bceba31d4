"""Start the `tritonserver` that nvidia-pytriton ships (server 2.51, python backend) on loopback.

The two set-up steps that binary needs are done here, without touching site-packages: a backend
directory in the user cache holds links to pytriton's python backend plus the stub for this
Python version, and the wheel's bundled libraries go on LD_LIBRARY_PATH.

That server has no other backend, so `servable_models` splits a repository into the models it
loads (python backend) and the ones it skips, and the server starts in explicit model-control
mode with exactly those. Stopping is bounded: see `TritonServer.stop`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from onerank_export.errors import StageError

LOOPBACK = "127.0.0.1"
# tritonserver's --exit-timeout-secs (default 30). After SIGINT/SIGTERM it first waits, one second at a time, for
# every open HTTP connection to close (an idle keep-alive client never does), then for in-flight inferences and
# the models' unload, all out of this one budget; when it runs out the server exits with code 1 regardless
# (server src/main.cc, http_server.cc HTTPServer::Stop; core src/server.cc InferenceServer::Stop).
# 3 s covers the python-backend unload measured here (~2.5 s) and keeps `serve` under the 5 s.
EXIT_TIMEOUT_S = 3
# After the exit timeout: the time tritonserver gets to tear down before its process group is killed.
KILL_GRACE_S = 1.5
PYTHON_BACKEND = "python"


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


def _libpython_dir() -> str | None:
    """The directory of this interpreter's libpython, so the stub (linked against `libpython3.X.so`) loads
    the very Python that launched it. Otherwise the loader finds the system's (Debian 12: 3.11.2) while
    the stub's stdlib is this interpreter's (3.11.7), and C modules built for the newer patch release
    fail to import (_ssl: undefined symbol _PyModule_Add), which takes redis-py down with them."""
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir:
        return None
    return libdir if Path(libdir, sysconfig.get_config_var("LDLIBRARY") or "").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class TritonServer:
    """A tritonserver process on loopback; a context manager that waits for readiness and stops it."""

    def __init__(self, repository: Path, http_port: int | None = None, grpc_port: int | None = None,
                 log_file: Path | None = None, startup_timeout: float = 120.0,
                 models: Sequence[str] | None = None, exit_timeout: int = EXIT_TIMEOUT_S,
                 metrics_port: int | None = None) -> None:
        """`models`: load exactly these (explicit model control); None loads every model in the repository,
        which then must all have a backend this server has (`servable_models` says which do).
        `metrics_port`: serve Prometheus metrics (incl. the user-state cache's) there, on loopback; 0 picks
        a free port; None: no metrics endpoint."""
        if models is not None and not models:
            raise StageError(f"{repository}: no model to load")
        if exit_timeout < 0:
            raise StageError(f"exit timeout {exit_timeout} s: must be >= 0")
        self.repository = Path(repository).resolve()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = None if metrics_port is None else (metrics_port or free_port())
        self.startup_timeout = startup_timeout
        self.models = None if models is None else list(models)
        self.exit_timeout = exit_timeout
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self._stopped = False
        self._log_handle = None

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        binary = pytriton_root() / "bin" / "tritonserver"
        return [str(binary), "--model-repository", str(self.repository),
                "--backend-directory", str(backend_directory()),
                "--http-address", LOOPBACK, "--http-port", str(self.http_port),
                "--grpc-address", LOOPBACK, "--grpc-port", str(self.grpc_port),
                *self._metrics(), "--strict-readiness", "true", "--exit-on-error", "true",
                "--exit-timeout-secs", str(self.exit_timeout),
                *self._model_control()]

    def _metrics(self) -> list[str]:
        if self.metrics_port is None:
            return ["--allow-metrics", "false"]
        return ["--allow-metrics", "true", "--allow-gpu-metrics", "false", "--metrics-address", LOOPBACK,
                "--metrics-port", str(self.metrics_port)]

    def _model_control(self) -> list[str]:
        # Explicit mode loads only the --load-model names, so models of backends this server lacks are never
        # attempted; with --strict-readiness, /v2/health/ready then waits for exactly those.
        if self.models is None:
            return []
        return ["--model-control-mode", "explicit", *(f"--load-model={name}" for name in self.models)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = pytriton_root().parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), _libpython_dir(), env.get("LD_LIBRARY_PATH"))
                                                 if p)
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
        self._stopped = False
        # A session of its own: a Ctrl-C in the terminal reaches only our process, which then stops the server
        # with a bounded stop (`stop`) instead of tritonserver and its stubs each reacting on their own.
        self.process = spawn_service(self.command(), stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     env=self.environment())
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Until the server and every requested model answer ready (or the process exits: a load error)."""
        deadline = time.monotonic() + self.startup_timeout
        paths = ["/v2/health/ready", *(f"/v2/models/{name}/ready" for name in self.models or ())]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(f"tritonserver exited with code {self.process.returncode} while loading "
                                 f"{self.repository}: {self.last_error()}")
            if all(_answers_ok(f"http://{self.http_url}{path}") for path in paths):
                return
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
        # 1000, not less: a model's load error carries its own one-line reason after two paths (a bad
        # embedding store's names the store directory, the table, the file and the fix).
        return f"{line[:1000]} (log: {self.log_file})"

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

    def stop(self) -> int | None:
        """Stop within `exit_timeout + KILL_GRACE_S` seconds; the server's exit code (None: never started).

        SIGINT is tritonserver's graceful stop (SIGTERM is handled identically, server src/triton_signal.cc):
        it stops accepting connections, lets in-flight requests finish and unloads the models, for at most
        its exit timeout, then exits (code 1 when that timeout ran out, e.g. an idle keep-alive client held
        a connection). A second signal is ignored by tritonserver, so the bound is enforced here: SIGKILL to
        the process group, which also holds the python-backend stubs.
        """
        if self.process is None:
            return None
        if self._stopped and self.process.poll() is not None and self._log_handle is None:
            return self.process.returncode
        self._stopped = True
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(self.exit_timeout + KILL_GRACE_S)
        finally:  # also when a second Ctrl-C interrupts the wait: the bound holds and nothing outlives us
            # Also after a clean exit: stubs orphaned by an expired exit timeout must not outlive the server.
            # The group id cannot be reused while any of its members lives, so this reaches only our processes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn_service(command: list[str], **popen) -> subprocess.Popen:
    """A server process in a session of its own (a terminal's Ctrl-C reaches only us, and we stop it with a
    bounded stop), killed with its parent when started from the main thread (prctl, below)."""
    main = threading.current_thread() is threading.main_thread()
    return subprocess.Popen(command, start_new_session=True,
                            preexec_fn=_stop_with_parent(os.getpid()) if main else None, **popen)


def _stop_with_parent(parent: int):
    """A pre-exec hook: the server gets SIGTERM when the thread that started it dies, even by SIGKILL, so a
    killed `serve` cannot leave a server holding its ports (Linux prctl PR_SET_PDEATHSIG; None elsewhere).
    Armed only when the main thread starts the server: the signal follows the starting *thread*, so a
    server started from a worker thread (a pool, asyncio.to_thread) would die with that thread."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: no loader lock in the child
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return hook


def _answers_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTP error status (not ready yet)
        return False


def resolve_repository(path: Path) -> Path:
    """A build dir (it has manifest.json) serves its model_repository/; a repository dir serves itself."""
    from onerank_export.serving.repository import REPOSITORY_DIR

    path = Path(path)
    if not path.is_dir():
        raise StageError(f"{path}: not a directory; pass a build dir or a model repository")
    if (path / "manifest.json").is_file():
        if not (path / REPOSITORY_DIR).is_dir():
            raise StageError(f"{path}: build directory without {REPOSITORY_DIR}/; run `onerank-export build`")
        path = path / REPOSITORY_DIR
    if not _model_dirs(path):
        raise StageError(f"{path}: no model directories with config.pbtxt; pass a build dir or a model repository")
    return path


def _model_dirs(repository: Path) -> list[Path]:
    return sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def servable_models(repository: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(models the bundled tritonserver loads, [(model, why it is skipped)]), by each config's backend.

    A cpu-target repository also holds `onnxruntime_onnx` models for production CPU fleets; they are
    skipped here, not refused. A repository with no python-backend model (a gpu-target build) is a
    one-line error naming its target and what to do instead.
    """
    from onerank_export.serving.model_config import mc, read_config

    load: list[str] = []
    skipped: list[tuple[str, str]] = []
    kinds: set[int] = set()
    ensembles: list[tuple[str, list[str]]] = []
    for model in _model_dirs(repository):
        cfg = read_config(model / "config.pbtxt")
        kinds |= {group.kind for group in cfg.instance_group}
        if cfg.backend == PYTHON_BACKEND:
            load.append(model.name)  # --load-model takes the directory name, which Triton requires = cfg.name
            continue
        if cfg.platform == "ensemble":  # the server core runs ensembles; loaded when each step is (below)
            ensembles.append((model.name, [step.model_name for step in cfg.ensemble_scheduling.step]))
            continue
        kind = f"platform {cfg.platform}" if cfg.platform else f"backend {cfg.backend or 'unset'}"
        skipped.append((model.name, f"{kind}: the bundled tritonserver has the python backend only; serve this "
                                    "repository with NVIDIA's Triton container to load it"))
    for name, steps in ensembles:
        missing = [s for s in steps if s not in load]
        if missing:
            skipped.append((name, f"ensemble: its step {missing[0]} is not loaded here"))
        else:
            load.append(name)
    if mc.ModelInstanceGroup.KIND_GPU in kinds:
        # A gpu-target repository may hold python-backend helpers (a split build's lookup, the cached model's
        # BLS front) whose work runs on its GPU models: serving the helpers alone would look like success.
        gpu = ", ".join(f"{name} ({why.split(':')[0]})" for name, why in skipped)
        raise StageError(f"{repository}: a gpu-target repository (models {gpu} run on KIND_GPU), and the "
                         "bundled tritonserver has the python backend only, on the CPU; serve it with NVIDIA's "
                         "Triton container (see its README.md), or `onerank-export build --target cpu` for a "
                         "repository that `onerank-export serve` runs here")
    if not load:
        models = ", ".join(f"{name} ({why.split(':')[0]})" for name, why in skipped)
        raise StageError(f"{repository}: a repository with no python-backend model ({models}), and the bundled "
                         "tritonserver has the python backend only; serve it with NVIDIA's Triton container "
                         "(see its README.md), or `onerank-export build --target cpu` for a repository that "
                         "`onerank-export serve` runs here")
    return load, skipped
