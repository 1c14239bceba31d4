"""What onerank-export's python-backend models (python_model.py, dense_model.py, lookup_model.py) share:
their settings read from the arguments Triton hands `initialize`, and error responses with a code.

Torch-free and Triton-free: the models pass in `triton_python_backend_utils`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from onerank_export.config import OneRankConfig
from onerank_export.serving.parameters import CONFIG_PARAMETER, THREADS_PARAMETER


@dataclass(frozen=True)
class ModelSettings:
    params: dict[str, str]  # the config's string parameters
    max_batch: int
    version_dir: str  # <model directory>/<version>: the model's files
    threads: int  # ONNX Runtime intra-op threads

    @property
    def config(self) -> OneRankConfig:
        """The OneRank config the model serves (its `onerank.config` parameter)."""
        return OneRankConfig.from_dict(json.loads(self.params[CONFIG_PARAMETER]), source="config.pbtxt")


def model_settings(args: dict) -> ModelSettings:
    model_config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
    return ModelSettings(params, int(model_config.get("max_batch_size", 0)),
                         os.path.join(args["model_repository"], args["model_version"]),
                         int(params.get(THREADS_PARAMETER, "1")))


def triton_error(pb_utils, message: str, code: str | None = None):
    """A TritonError with `code` (e.g. "INVALID_ARG": HTTP 400, the client's error; "UNAVAILABLE": 503) where
    this python backend has error codes, else a plain one."""
    value = getattr(pb_utils.TritonError, code, None) if code else None
    return pb_utils.TritonError(message) if value is None else pb_utils.TritonError(message, value)
