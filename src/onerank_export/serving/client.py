"""A small Triton client for OneRank models, over HTTP or gRPC.

    from onerank_export.serving.client import OneRankClient

    with OneRankClient("127.0.0.1:8000") as client:          # protocol="grpc" for port 8001
        scores = client.score(request)                      # request: {name: np.ndarray}, serving contract
        # scores: float32 [B, N, K], per-task probabilities; 0 for padded candidates

The client reads the served model's own config (its `onerank.config` parameter and
max_batch_size) and validates every request against it before sending — names, dtypes,
ranks, N and L against the model's limits, ids against the vocabularies — so a bad request
fails here with one line instead of as a server-side error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tritonclient.utils import np_to_triton_dtype

from onerank_export import spec
from onerank_export.config import OneRankConfig
from onerank_export.errors import RequestError, StageError, first_line
from onerank_export.serving.model_config import config_from_parameters
from onerank_export.serving.parameters import PROTOCOLS


class OneRankClient:
    def __init__(self, url: str, model_name: str = "onerank", protocol: str = "http", timeout: float = 60.0,
                 validate: bool = True) -> None:
        if protocol not in PROTOCOLS:
            raise RequestError(f"protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
        self.url = url.removeprefix("http://").removeprefix("grpc://")
        self.model_name = model_name
        self.protocol = protocol
        self.timeout = timeout
        self.validate = validate
        self._lib = _client_module(protocol)
        try:
            self._client = (self._lib.InferenceServerClient(self.url, network_timeout=timeout)
                            if protocol == "http" else self._lib.InferenceServerClient(self.url))
        except Exception as exc:
            raise StageError(f"Triton at {self.url}: cannot create {protocol} client ({first_line(exc)})") from None
        self.config, self.max_batch_size = self._model_limits()

    def _model_limits(self) -> tuple[OneRankConfig, int]:
        try:
            live = self._client.is_server_live()
        except Exception as exc:
            raise StageError(f"Triton at {self.url} ({self.protocol}) is not reachable: {first_line(exc)}") from None
        if not live:
            raise StageError(f"Triton at {self.url} is not live")
        try:
            if self.protocol == "grpc":
                raw = self._client.get_model_config(self.model_name, as_json=True)["config"]
            else:
                raw = self._client.get_model_config(self.model_name)
        except Exception as exc:
            raise StageError(f"Triton at {self.url}: model {self.model_name!r} unavailable "
                             f"({first_line(exc)})") from None
        source = f"Triton model {self.model_name!r}"
        return config_from_parameters(raw, source), int(raw.get("max_batch_size", 0))

    def score(self, request: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores [B, N, K] for one batch of requests in the serving contract."""
        if self.validate:
            spec.validate_request(self.config, request, max_batch=self.max_batch_size)
        inputs = []
        for name, value in request.items():  # unvalidated requests go as they are: the server judges them
            array = np.ascontiguousarray(value)
            tensor = self._lib.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self._lib.InferRequestedOutput(name) for name in spec.OUTPUT_NAMES]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout)
            else:
                result = self._client.infer(self.model_name, inputs, outputs=outputs)
        except Exception as exc:
            raise RequestError(f"Triton rejected the request: {first_line(exc)}") from None
        return result.as_numpy("scores")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OneRankClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as lib
    else:
        import tritonclient.grpc as lib
    return lib
