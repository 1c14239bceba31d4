"""Triton python-backend model `onerank_dense` (split mode): the dense ONNX with looked-up rows as inputs.

Copied verbatim to `model_repository/onerank_dense/1/model.py`; runs `1/model.onnx` (the dense graph)
in ONNX Runtime's CPU session (the product's CPU rewrite), as serving/python_model.py runs the inline
graph. It checks the request against the serving contract except the item ids' range (the lookup
step owns that, with the store's OOV policy; here the ids only give masks) and the rows' shapes.
"""

from __future__ import annotations

import os
import site
import sys

# As serving/python_model.py, but the launcher's paths go first, in its order: the stub's own site-packages
# may hold another onerank_export (an editable install of another checkout) that must not shadow the server's.
_paths = [p for p in os.environ.get("ONERANK_PYTHONPATH", "").split(os.pathsep) if p]
sys.path[:0] = [p for p in _paths if p not in sys.path]
for _path in _paths:
    site.addsitedir(_path)  # runs its .pth files (editable installs)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from onerank_export import spec  # noqa: E402
from onerank_export.config import OneRankConfig  # noqa: E402
from onerank_export.embeddings.split import DENSE_INPUT_NAMES, ROW_INPUTS  # noqa: E402
from onerank_export.errors import RequestError  # noqa: E402
from onerank_export.export.ort_session import cpu_session  # noqa: E402
from onerank_export.serving.backend_model import model_settings, triton_error  # noqa: E402


def check_dense_request(config: OneRankConfig, feed: dict, max_batch: int) -> None:
    """The contract minus the item-id range, then each row tensor [*ids.shape, d_model] float32."""
    masks = {ids: (feed[ids] != 0).astype(np.int64) for ids in ROW_INPUTS.values()}
    spec.validate_request(config, {**{n: feed[n] for n in spec.INPUT_NAMES}, **masks}, max_batch=max_batch)
    for row, ids in ROW_INPUTS.items():
        want = (*feed[ids].shape, config.d_model)
        if feed[row].dtype != np.float32 or feed[row].shape != want:
            raise RequestError(f"request: '{row}' is {feed[row].dtype} {list(feed[row].shape)}, expected float32 "
                               f"{list(want)} (the rows of '{ids}')")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        settings = model_settings(args)
        self.config, self.max_batch = settings.config, settings.max_batch
        self.session = cpu_session(os.path.join(settings.version_dir, "model.onnx"), settings.threads,
                                   inter_op_threads=1)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                feed = {}
                for name in DENSE_INPUT_NAMES:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is None:
                        raise RequestError(f"missing input '{name}'")
                    feed[name] = tensor.as_numpy()
                check_dense_request(self.config, feed, self.max_batch)
                (scores,) = self.session.run(list(spec.OUTPUT_NAMES), feed)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("scores", scores)]))
            except RequestError as exc:
                responses.append(pb_utils.InferenceResponse(error=triton_error(pb_utils, str(exc), "INVALID_ARG")))
            except Exception as exc:  # this request failed; the model keeps serving the others
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}")))
        return responses

    def finalize(self) -> None:
        self.session = None
