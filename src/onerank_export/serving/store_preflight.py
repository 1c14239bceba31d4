"""Before `serve` starts tritonserver: open every memory-mapped embedding store its lookup models read.

The lookup model opens its store in `initialize`; a bad store there fails the model's load, and
tritonserver started by `serve` (`--exit-on-error true`) then exits after seconds of start-up with the
error buried in its log. The same check (embeddings/backends.py `open_lookup`: sizes against the index,
rows and dim against the model's config, the sha256 when the config asks for it) run here first gives
the user the store's one-line error before anything starts. Redis-backed lookups are not contacted:
the server is meant to start before Redis or the push (the lookup answers UNAVAILABLE until then).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from onerank_export.errors import OneRankError, StageError
from onerank_export.serving.model_config import read_config
from onerank_export.serving.parameters import (
    CONFIG_PARAMETER,
    EMBEDDING_STORE_PARAMETER,
)


def check_lookup_stores(repository: Path, models: Iterable[str]) -> list[str]:
    """Open the store of each of `models` that memory-maps one; returns the models checked. A bad store
    is a one-line StageError naming the model and the store's problem."""
    from onerank_export.embeddings.backends import backend_of, open_lookup

    checked = []
    for name in models:
        model_dir = Path(repository) / name
        cfg = read_config(model_dir / "config.pbtxt")
        params = {key: value.string_value for key, value in cfg.parameters.items()}
        if EMBEDDING_STORE_PARAMETER not in params:
            continue
        if backend_of(params) != "mmap":
            continue
        config = json.loads(params[CONFIG_PARAMETER]) if CONFIG_PARAMETER in params else {}
        try:
            open_lookup(params, base=model_dir.resolve(), rows=config.get("item_vocab_size"),
                        dim=config.get("d_model"))
        except OneRankError as exc:
            raise StageError(f"{name}: {exc}; tritonserver was not started") from None
        checked.append(name)
    return checked
