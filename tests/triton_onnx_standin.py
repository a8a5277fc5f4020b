"""Test-only stand-in for the ONNX Runtime backend inside PyTriton's tritonserver.

PyTriton's binary has the Python backend only, so the ``NAME_onnx`` model (platform
``onnxruntime_onnx``) cannot load there. The test swaps the platform line of a copy of the
repository for ``backend: "python"`` and drops in this file as ``NAME_onnx/1/model.py``: it
runs the same ``model.onnx`` with onnxruntime, taking and returning the tensors that the
written config.pbtxt declares. Everything else Triton parses and runs for real: that config's
batching and instance settings, the tokenizer and postprocess models and the ensemble wiring.
"""

import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


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
            feeds = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
            values = self.session.run(self.outputs, feeds)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]))
        return responses
