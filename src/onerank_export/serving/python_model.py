"""Triton python-backend model: the CPU-rewritten fp32 ONNX run by ONNX Runtime on the CPU.

Copied verbatim to `model_repository/onerank/1/model.py` by a cpu-target `build`. It serves the same
inputs, outputs and dims as the production configs, and validates every request against the
serving contract (the `onerank.config` parameter of its config.pbtxt) before running it, so a
bad request gets a one-line error and the model keeps serving.

With `build --user-cache` the version directory holds the user encoder and the candidate scorer
instead of model.onnx, and the same model serves through the cross-request user-state cache
(serving/cached_scoring.py), exporting its hits, misses, bytes, evictions and encoder time as
Triton custom metrics (serving/cache_metrics.py).
"""

from __future__ import annotations

import os
import site
import sys

# The python backend stub starts its interpreter without site-packages. `onerank-export serve`
# passes the launching environment's import path; addsitedir also runs its .pth files (editable
# installs).
for _path in os.environ.get("ONERANK_PYTHONPATH", "").split(os.pathsep):
    if _path and _path not in sys.path:
        site.addsitedir(_path)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from onerank_export import spec  # noqa: E402
from onerank_export.errors import RequestError  # noqa: E402
from onerank_export.export.ort_session import cpu_session  # noqa: E402
from onerank_export.serving.backend_model import model_settings, triton_error  # noqa: E402
from onerank_export.serving.parameters import USER_ENCODER_FILE, USER_ENCODER_MODEL_PARAMETER  # noqa: E402


def _client_error(message: str):
    """Bad requests are the client's error (HTTP 400 / INVALID_ARGUMENT), not the server's."""
    return triton_error(pb_utils, message, "INVALID_ARG")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        settings = model_settings(args)
        self.config, self.max_batch = settings.config, settings.max_batch
        params, version, threads = settings.params, settings.version_dir, settings.threads
        self.cached = None
        if os.path.exists(os.path.join(version, USER_ENCODER_FILE)) or USER_ENCODER_MODEL_PARAMETER in params:
            from onerank_export.serving.cache_metrics import CacheMetrics
            from onerank_export.serving.cached_scoring import open_cached_scorer

            self.cached = open_cached_scorer(self.config, version, params, threads, pb_utils)
            self.metrics = CacheMetrics(pb_utils, args["model_name"], args["model_version"])
            self.session = None
        else:
            self.session = cpu_session(os.path.join(version, "model.onnx"), threads, inter_op_threads=1)

    def execute(self, requests: list) -> list:
        """Requests that Triton's dynamic batcher hands over together and that share L and N run as
        one ONNX Runtime call (a batch row is a whole ranking request, so stacking them along the
        batch axis changes no score); each bad request gets its own one-line error."""
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, request in enumerate(requests):
            try:
                feed = self._feed(request)
            except RequestError as exc:
                responses[i] = pb_utils.InferenceResponse(error=_client_error(str(exc)))
                continue
            except Exception as exc:  # reading one request failed: that client's error, the others go on
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))
                continue
            shape = tuple(feed[t.name].shape[1:] for t in spec.INPUTS)
            groups.setdefault(shape, []).append((i, feed))
        for members in groups.values():  # the dynamic batcher keeps their rows within max_batch_size
            self._run(members, responses)
        return responses

    def _feed(self, request) -> dict:
        feed = {}
        for t in spec.INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                raise RequestError(f"missing input '{t.name}'")
            feed[t.name] = tensor.as_numpy()
        spec.validate_request(self.config, feed, max_batch=self.max_batch)
        return feed

    def _run(self, members: list[tuple[int, dict]], responses: list) -> None:
        sizes = [feed[spec.INPUTS[0].name].shape[0] for _, feed in members]
        batch = members[0][1] if len(members) == 1 else {
            t.name: np.concatenate([feed[t.name] for _, feed in members]) for t in spec.INPUTS}
        try:
            scores = self._score(batch)
        except Exception as exc:  # the model keeps serving; each request gets its own run's answer
            if len(members) > 1:  # one request must not fail the others it was stacked with
                for member in members:
                    self._run([member], responses)
                return
            (i, _), = members
            responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))
            return
        for (i, _), rows in zip(members, np.split(scores, np.cumsum(sizes)[:-1]), strict=True):
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor("scores", np.ascontiguousarray(rows))])

    def _score(self, batch: dict) -> np.ndarray:
        if self.cached is None:
            return self.session.run(list(spec.OUTPUT_NAMES), batch)[0]
        scored = self.cached.score(batch)
        self.metrics.update(self.cached.cache.stats(), scored.encoder_seconds)
        return scored.scores

    def finalize(self) -> None:
        self.session = self.cached = None
