"""Triton python-backend model `onerank_lookup` (split mode): item ids -> item rows from the embedding store.

Copied verbatim to `model_repository/onerank_lookup/1/model.py`. The store is memory-mapped, not
copied: every instance (and every model reading it) shares the page cache. Its path is the
`onerank.embedding_store` parameter, relative to the model directory (a build writes
`../../embeddings`, the build's one store) or absolute. At load the sizes, dtypes and dims are
checked against index.json (cheap); `onerank.embedding_verify: yes` also checks the sha256. With
`onerank.embedding_backend: redis` the rows come from Redis (`onerank.embedding_redis_url`; the store
pushed there by `onerank-export embeddings push`), embeddings/backends.py `open_lookup`.
Ids outside the table follow the store's OOV policy: the pad row, or (policy "error") an
INVALID_ARGUMENT response naming the table and the id, while the model keeps serving.
"""

from __future__ import annotations

import json
import os
import site
import sys

# As serving/python_model.py, but the launcher's paths go first, in its order: the stub's own site-packages
# may hold another onerank_export (an editable install of another checkout) that must not shadow the server's.
_paths = [p for p in os.environ.get("ONERANK_PYTHONPATH", "").split(os.pathsep) if p]
sys.path[:0] = [p for p in _paths if p not in sys.path]
for _path in _paths:
    site.addsitedir(_path)  # runs its .pth files (editable installs)

import triton_python_backend_utils as pb_utils  # noqa: E402

from onerank_export.embeddings.backends import open_lookup  # noqa: E402
from onerank_export.embeddings.split import LOOKUP_INPUT_NAMES, ROW_INPUTS  # noqa: E402
from onerank_export.embeddings.store import StoreError  # noqa: E402
from onerank_export.errors import RequestError, ServiceUnavailable  # noqa: E402
from onerank_export.serving.backend_model import model_settings, triton_error  # noqa: E402
from onerank_export.serving.parameters import CONFIG_PARAMETER  # noqa: E402


def _error(message: str, code_name: str):
    """INVALID_ARG (HTTP 400) for the client's ids, UNAVAILABLE (503) when the rows' server is down."""
    return triton_error(pb_utils, message, code_name)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = model_settings(args).params
        # mmap: a bad store fails the load with the store's one-line error (the server reports it per model).
        # redis: connects lazily, so the server starts before Redis or the push; until then UNAVAILABLE.
        config = json.loads(params[CONFIG_PARAMETER]) if CONFIG_PARAMETER in params else {}
        self.table = open_lookup(params, base=args["model_repository"], rows=config.get("item_vocab_size"),
                                 dim=config.get("d_model"))

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                outputs = []
                for row_name, ids_name in ROW_INPUTS.items():
                    tensor = pb_utils.get_input_tensor_by_name(request, ids_name)
                    if tensor is None:
                        raise StoreError(f"missing input '{ids_name}' (the lookup takes "
                                         f"{', '.join(LOOKUP_INPUT_NAMES)})")
                    outputs.append(pb_utils.Tensor(row_name, self.table.lookup(tensor.as_numpy())))
                responses.append(pb_utils.InferenceResponse(outputs))
            except (StoreError, RequestError) as exc:  # an id past the table under "error": the client's error
                responses.append(pb_utils.InferenceResponse(error=_error(str(exc), "INVALID_ARG")))
            except ServiceUnavailable as exc:  # Redis down, or the store not pushed: try again later
                responses.append(pb_utils.InferenceResponse(error=_error(str(exc), "UNAVAILABLE")))
            except Exception as exc:  # this request failed; the model keeps serving the others
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses

    def finalize(self) -> None:
        self.table = None
