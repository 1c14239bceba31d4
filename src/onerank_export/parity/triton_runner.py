"""Runner for a model served by a Triton Inference Server (HTTP or gRPC)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onerank_export.errors import StageError
from onerank_export.parity.runner import Runner, RunnerUnavailable


class TritonRunner(Runner):
    def __init__(self, url: str, model_name: str = "onerank", protocol: str = "http", name: str | None = None) -> None:
        super().__init__(name or f"triton-{protocol}:{model_name}")
        self.url, self.model_name, self.protocol = url, model_name, protocol
        self.client = None

    def activate_impl(self) -> None:
        from onerank_export.serving.client import OneRankClient

        try:
            # Validation off: parity cases are valid by construction, and the server validates anyway.
            self.client = OneRankClient(self.url, self.model_name, self.protocol, validate=False)
        except StageError as exc:
            raise RunnerUnavailable(str(exc)) from None

    def infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"scores": self.client.score(feed)}

    def deactivate_impl(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
