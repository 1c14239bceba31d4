"""`serve`: a real Triton Inference Server on loopback for a built repository."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from onerank_export.cli.common import console, existing_dir


@click.command()
@click.option("--repository", type=existing_dir, default=Path("build"),
              show_default=True, help="A build directory (serves its model_repository) or a model repository.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True,
              help="Prometheus metrics (incl. the user-state cache's) on 127.0.0.1.")
@click.option("--startup-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds to wait for every model to load.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Server log file (default: a temporary file, printed at start).")
def serve(repository: Path, http_port: int, grpc_port: int, metrics_port: int, startup_timeout: float,
          log_file: Path | None) -> int:
    """Start tritonserver (from nvidia-pytriton, python backend, CPU) on 127.0.0.1 with the repository's
    python-backend models; Ctrl-C or SIGTERM stops it within a few seconds."""
    from onerank_export.errors import StageError
    from onerank_export.serving.server import TritonServer, resolve_repository, servable_models
    from onerank_export.serving.store_preflight import check_lookup_stores

    repo = resolve_repository(repository)
    load, skipped = servable_models(repo)
    for name, why in skipped:
        console.print(f"skipped: {name} ({why})", markup=False)
    check_lookup_stores(repo, load)  # a bad embedding store: its one line now, not a server exit later
    server = TritonServer(repo, http_port, grpc_port, log_file=log_file, startup_timeout=startup_timeout,
                          models=load, metrics_port=metrics_port)
    # Installed before the server starts, so a signal during loading stops it too. Background jobs start with
    # SIGINT ignored; a server must still stop on Ctrl-C / kill -INT / kill -TERM.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    console.print(f"starting tritonserver on {repo} ...")
    started = time.perf_counter()
    interrupted = False
    try:
        server.start()
        console.print(f"[green]ready[/] in {time.perf_counter() - started:.1f} s: models {', '.join(load)}\n"
                      f"  HTTP  {server.http_url}\n  gRPC  {server.grpc_url}\n  metrics {server.metrics_url}\n"
                      f"  log   {server.log_file}\n"
                      f"check it:  onerank-export verify --triton {server.http_url} "
                      f"--triton-metrics {server.metrics_url}\n"
                      "Ctrl-C stops the server.")
        while server.process.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        console.print("stopping tritonserver ...")
    finally:
        # The stop is bounded (TritonServer.stop); a second Ctrl-C must not cut it short and leave the
        # server or its stubs running.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        stopping = time.perf_counter()
        code = server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not interrupted:
        raise StageError(f"tritonserver exited with code {code}: {server.last_error()}")
    console.print(f"stopped in {time.perf_counter() - stopping:.1f} s")
    return 0


def _stop_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt
