"""Split mode as a parity runner: the store's lookup (embeddings/store.py) feeding the dense ONNX in
ONNX Runtime's CPU session (the product's CPU rewrite, as the dense Triton model runs it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onerank_export import spec
from onerank_export.parity.runner import Runner
from onerank_export.precision import Precision

STORE_PRECISION = {"float32": Precision.FP32, "float16": Precision.FP16, "int8": Precision.INT8}


class SplitRunner(Runner):
    def __init__(self, dense: Path, store: Path, name: str | None = None) -> None:
        super().__init__(name or "split")
        self.dense, self.store = Path(dense), Path(store)
        self.session = self.table = None

    @staticmethod
    def precision_of(store: Path) -> Precision:
        """The tolerance a store is held to: its row dtype's (fp32 store: the fp32 tolerance)."""
        from onerank_export.embeddings.store import open_store

        return STORE_PRECISION[open_store(store).table().dtype]

    def activate_impl(self) -> None:
        from onerank_export.embeddings.store import open_store
        from onerank_export.export.metadata import read_metadata
        from onerank_export.export.ort_session import cpu_session, default_threads

        config = read_metadata(self.dense).config
        store = open_store(self.store, verify=True, mapped=False)  # pread: parity must not map the table
        self.table = store.table("item", rows=config.item_vocab_size if config else None,
                                 dim=config.d_model if config else None)
        self.session = cpu_session(str(self.dense), default_threads())

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onerank_export.embeddings.split import dense_feed

        outputs = self.session.run(list(spec.OUTPUT_NAMES), dense_feed(self.table, feed))
        return dict(zip(spec.OUTPUT_NAMES, outputs, strict=True))

    def deactivate_impl(self) -> None:
        self.session = self.table = None
