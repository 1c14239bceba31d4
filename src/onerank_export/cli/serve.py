"""`serve`: a real Triton Inference Server on loopback for a built repository."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from onerank_export.cli.common import console


@click.command()
@click.option("--repository", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("build"),
              show_default=True, help="A build directory (serves its model_repository_cpu) or a model repository.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--startup-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds to wait for every model to load.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Server log file (default: a temporary file, printed at start).")
def serve(repository: Path, http_port: int, grpc_port: int, startup_timeout: float, log_file: Path | None) -> int:
    """Start tritonserver (from nvidia-pytriton, python backend, CPU) on 127.0.0.1; Ctrl-C stops it."""
    from onerank_export.serving.server import TritonServer, resolve_repository

    repo = resolve_repository(repository)
    server = TritonServer(repo, http_port, grpc_port, log_file=log_file, startup_timeout=startup_timeout)
    console.print(f"starting tritonserver on {repo} ...")
    started = time.perf_counter()
    server.start()
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    console.print(f"[green]ready[/] in {time.perf_counter() - started:.1f} s: models {', '.join(models)}\n"
                  f"  HTTP  {server.http_url}\n  gRPC  {server.grpc_url}\n  log   {server.log_file}\n"
                  f"check it:  onerank-export verify --triton {server.http_url}\n"
                  "Ctrl-C stops the server.")
    # Background jobs start with SIGINT ignored; a server must still stop on Ctrl-C / kill -INT / TERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
        from onerank_export.errors import StageError

        raise StageError(f"tritonserver exited with code {server.process.returncode}: {server.last_error()}")
    except KeyboardInterrupt:
        console.print("stopping tritonserver")
    finally:
        server.stop()
    return 0


def _stop_on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt
