"""A Triton model called from inside a python-backend model (Triton's business-logic scripting), with
the `run(output_names, feed)` interface of an ONNX Runtime session, so `CachedUserScorer` runs the
user encoder and the candidate scorer as TensorRT models on a GPU target exactly as it runs ONNX
Runtime sessions in-process on a CPU target.

Outputs are asked for in CPU memory (`preferred_memory`, python backend 23.05+): the cache keeps
states in host memory, and `as_numpy()` only reads CPU tensors. A failed call raises with the
called model's own message; the calling model turns it into that request's error response. A model
that calls others this way has no `model_warmup`: Triton runs warm-ups while the server is still
starting, when every BLS call fails with "Server not ready"; the called models warm themselves up.
Torch-free; it imports no Triton module (the python model hands in `triton_python_backend_utils`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onerank_export.errors import StageError


class BlsSession:
    def __init__(self, pb_utils, model_name: str, output_names: Sequence[str]) -> None:
        self.pb_utils, self.model_name, self.output_names = pb_utils, model_name, tuple(output_names)
        memory = getattr(pb_utils, "PreferredMemory", None)
        self._cpu = None if memory is None else memory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        pb = self.pb_utils
        names = list(output_names or self.output_names)
        kwargs = {"preferred_memory": self._cpu} if self._cpu is not None else {}
        request = pb.InferenceRequest(model_name=self.model_name, requested_output_names=names,
                                      inputs=[pb.Tensor(k, np.ascontiguousarray(v)) for k, v in feed.items()],
                                      **kwargs)
        response = request.exec()
        if response.has_error():
            raise StageError(f"{self.model_name}: {response.error().message()}")
        out = []
        for name in names:
            tensor = pb.get_output_tensor_by_name(response, name)
            if tensor is None:
                raise StageError(f"{self.model_name} returned no '{name}'")
            out.append(tensor.as_numpy())
        return out
