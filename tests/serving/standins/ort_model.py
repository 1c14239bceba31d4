"""A python-backend model that runs its version directory's model.onnx with ONNX Runtime on whatever
inputs its config declares: a stand-in for a TensorRT model of the halves (the bundled tritonserver
has no TensorRT backend), so the BLS path of the cached model runs end to end here."""

import json
import os
import site
import sys

for _path in os.environ.get("ONERANK_PYTHONPATH", "").split(os.pathsep):
    if _path and _path not in sys.path:
        site.addsitedir(_path)

import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            outputs = self.session.run(self.outputs, feed)
            tensors = [pb_utils.Tensor(n, o) for n, o in zip(self.outputs, outputs, strict=True)]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
