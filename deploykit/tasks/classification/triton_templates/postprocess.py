"""Triton Python-backend model written by deploykit: logits -> LABEL and SCORES.

Input ``logits`` is FP32 [n, num_labels]; outputs ``LABEL`` (BYTES [n, 1], the most likely
label's name) and ``SCORES`` (FP32 [n, num_labels], softmax probabilities in label-id order).
The label names sit in this model's config.pbtxt (parameter ``labels``, a JSON list).
Needs only numpy.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.labels = json.loads(config["parameters"]["labels"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            # float64 softmax, as deploykit's runtime computes it, so scores agree to rounding.
            shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
            probs = np.exp(shifted)
            probs /= probs.sum(axis=-1, keepdims=True)
            labels = np.array([[self.labels[i].encode("utf-8")] for i in probs.argmax(axis=-1)],
                              dtype=np.object_).reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LABEL", labels),
                pb_utils.Tensor("SCORES", probs.astype(np.float32)),
            ]))
        return responses
