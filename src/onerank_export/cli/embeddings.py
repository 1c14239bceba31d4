"""`embeddings`: the split-mode embedding store's commands (`embeddings push`: a store into Redis)."""

from __future__ import annotations

from pathlib import Path

import click

from onerank_export.cli.common import console, err_console, existing_dir

PROGRESS_EVERY_S = 1.0  # one stderr line a second at most: a 20M-row push stays readable in a CI log


@click.group()
def embeddings() -> None:
    """The embedding store of a `build --embeddings split` (DIR/embeddings): load it into a lookup backend."""


@embeddings.command()
@click.option("--store", "store", type=existing_dir, required=True,
              help="The store directory (index.json + table files), or a build directory holding embeddings/.")
@click.option("--redis", "url", required=True, help="Redis URL: redis://host:port/db, rediss://... or unix://...")
@click.option("--prefix", default=None,
              help="Key prefix. Default: onerank:emb:<checkpoint sha256[:12]>: (what the lookup model derives).")
@click.option("--table", default="item", show_default=True, help="The store's table to push.")
@click.option("--batch-rows", type=click.IntRange(1), default=4096, show_default=True, help="Rows per MSET.")
@click.option("--sample-rows", type=click.IntRange(0), default=1024, show_default=True,
              help="Rows read back and compared byte for byte after the push.")
@click.option("--cluster", is_flag=True, help="The URL names a node of a Redis Cluster.")
def push(store: Path, url: str, prefix: str | None, table: str, batch_rows: int, sample_rows: int,
         cluster: bool) -> int:
    """Bulk-load a store's table into Redis, count its keys, read a sample back, and only then write the
    <prefix>index key that lets a lookup model serve it (an interrupted push is never served)."""
    from onerank_export.embeddings.redis_backend import push as push_table
    from onerank_export.redis_client import mask_url

    last = [0.0]

    def progress(done: int, total: int, seconds: float) -> None:
        if done == total or seconds - last[0] >= PROGRESS_EVERY_S:
            last[0] = seconds
            rate = done / seconds if seconds > 0 else 0.0
            err_console.print(f"  {done}/{total} rows ({100 * done / total:.0f}%), {rate:,.0f} rows/s", markup=False)

    err_console.print(f"pushing table {table} of {store} to {mask_url(url)} ...", markup=False)
    report = push_table(store, url, table=table, prefix=prefix, batch_rows=batch_rows, sample_rows=sample_rows,
                        progress=progress, cluster=cluster)
    console.print(f"pushed table {report.table}: {report.rows} rows ({report.bytes / 2**20:.1f} MiB) under "
                  f"{report.prefix!r} in {report.seconds:.1f} s ({report.rows_per_s:,.0f} rows/s); verified "
                  f"{report.rows} keys and {report.sampled} sampled rows byte-equal; claimed by {report.prefix}index",
                  markup=False)
    return 0
