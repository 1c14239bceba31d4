"""The user-state cache's Triton custom metrics (the python backend's metrics API).

Exported on the server's Prometheus endpoint (`/metrics`, the metrics port), one series per model
and version:

    onerank_user_cache_hits_total{tier="local"|"shared"}   rows whose states came from the cache
    onerank_user_cache_misses_total                        rows that ran the user encoder
    onerank_user_cache_bytes / _entries                    the in-process tier now (gauges)
    onerank_user_cache_evictions_total                     entries the byte limit pushed out
    onerank_user_cache_shared_errors_total                 failed Redis round trips (served anyway)
    onerank_user_encoder_seconds_total                     time spent in the user encoder

`verify --triton` reads them back (parse_cache_metrics). Torch-free, and it imports no Triton
module: the python model hands in its `triton_python_backend_utils`.
"""

from __future__ import annotations

import logging
import re

PREFIX = "onerank_user_"
COUNTERS = {  # metric name -> (TieredStats field or None, help text)
    "cache_misses_total": ("misses", "user-state cache misses (rows that ran the user encoder)"),
    "cache_evictions_total": ("evictions", "user-state cache entries evicted by the byte limit"),
    "cache_shared_errors_total": ("shared_errors", "failed round trips to the shared (Redis) tier"),
    "encoder_seconds_total": (None, "seconds spent in the user encoder"),
}
GAUGES = {
    "cache_bytes": ("bytes", "bytes held by the in-process user-state cache"),
    "cache_entries": ("entries", "entries in the in-process user-state cache"),
}
HITS = "cache_hits_total"


class CacheMetrics:
    """Counters follow the cache's cumulative stats by increments; a server without metrics (or an old
    python backend) leaves them off with one log line and serving goes on."""

    def __init__(self, pb_utils, model: str, version: str) -> None:
        self._last: dict[str, float] = {}
        self._metrics: dict[str, object] = {}
        # The families must outlive their metrics: the backend refuses a metric whose family is gone.
        self._families: list[object] = []
        labels = {"model": model, "version": str(version)}
        try:
            family = pb_utils.MetricFamily

            def new(name: str, text: str, kind):
                self._families.append(family(name=PREFIX + name, description=text, kind=kind))
                return self._families[-1]

            hits = new(HITS, "user-state cache hits by tier", family.COUNTER)
            self._metrics["hits.local"] = hits.Metric(labels={**labels, "tier": "local"})
            self._metrics["hits.shared"] = hits.Metric(labels={**labels, "tier": "shared"})
            for kind, table in ((family.COUNTER, COUNTERS), (family.GAUGE, GAUGES)):
                for name, (_, text) in table.items():
                    self._metrics[name] = new(name, text, kind).Metric(labels=labels)
        except Exception as exc:  # metrics disabled on the server, or no metrics API in this backend
            self._off(exc)

    def _off(self, why: Exception) -> None:
        logging.getLogger(__name__).warning("user-state cache metrics off: %s", why)
        self._metrics, self._families = {}, []

    def update(self, stats, encoder_seconds: float) -> None:
        """Never fails a request: a metrics error turns the metrics off, with one log line."""
        if not self._metrics:
            return
        try:
            self._update(stats, encoder_seconds)
        except Exception as exc:
            self._off(exc)

    def _update(self, stats, encoder_seconds: float) -> None:
        totals = {"hits.local": stats.local_hits, "hits.shared": stats.shared_hits,
                  "encoder_seconds_total": self._last.get("encoder_seconds_total", 0.0) + encoder_seconds}
        totals |= {name: getattr(stats, field) for name, (field, _) in COUNTERS.items() if field}
        for name, total in totals.items():
            delta = total - self._last.get(name, 0)
            if delta:
                self._metrics[name].increment(delta)
            self._last[name] = total
        for name, (field, _) in GAUGES.items():
            self._metrics[name].set(getattr(stats, field))


_LINE = re.compile(r'^(onerank_user_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def parse_cache_metrics(text: str, model: str) -> dict[str, float]:
    """The cache series of `model` from a Prometheus text page, summed over versions:
    {"cache_hits_total.local": .., "cache_misses_total": .., ...}; {} when the model exports none."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if not match:
            continue
        name, labels, value = match[1].removeprefix(PREFIX), dict(re.findall(r'(\w+)="([^"]*)"', match[2])), match[3]
        if labels.get("model") != model:
            continue
        key = f"{name}.{labels['tier']}" if "tier" in labels else name
        out[key] = out.get(key, 0.0) + float(value)
    return out
