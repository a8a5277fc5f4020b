"""Triton Python-backend model written by deploykit: the whole classifier in one model.

TEXT (BYTES [n, 1]) in; LABEL (BYTES [n, 1]) and SCORES (FP32 [n, num_labels]) out, computed
by deploykit's torch-free runtime (tokenizers + onnxruntime) on the artifact copied into this
version folder. For Triton builds without the ONNX Runtime backend. The Python backend's
environment needs deploykit installed without its dependencies plus what the runtime imports:

    pip install --no-deps deploykit && pip install "numpy<2" onnxruntime tokenizers

All requests of one dynamic batch go to the runtime in one call; it re-batches them by its
token budget (rows sorted by length, padded to each batch's longest row).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from deploykit.runtime import Runtime


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"], "artifact")
        threads = int(params.get("threads", "0")) or None
        providers = [p for p in params.get("providers", "").split(",") if p] or None
        self.runtime = Runtime(folder, params.get("variant") or None, threads=threads,
                               providers=providers,
                               max_batch_size=int(config.get("max_batch_size") or 64))

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, owners = [], []
        for n, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                decoded = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
            except UnicodeDecodeError as exc:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"TEXT must be UTF-8 text: {exc}"))
                continue
            texts.extend(decoded)
            owners.extend([n] * len(decoded))
        results = self.runtime.predict(texts) if texts else []
        labels = self.runtime.labels
        by_request = {}
        for owner, result in zip(owners, results):
            by_request.setdefault(owner, []).append(result)
        for n in range(len(requests)):
            if responses[n] is not None:
                continue
            rows = by_request.get(n, [])
            label = np.array([r["label"].encode("utf-8") for r in rows], dtype=np.object_).reshape(-1, 1)
            scores = np.array([[r["scores"][name] for name in labels] for r in rows],
                              dtype=np.float32).reshape(-1, len(labels))
            responses[n] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LABEL", label), pb_utils.Tensor("SCORES", scores)])
        return responses
