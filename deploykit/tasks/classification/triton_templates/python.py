"""Triton Python-backend model written by deploykit: the whole classifier in one model.

TEXT (BYTES [n, 1]; a text-pair model's TEXT_PAIR too) in; LABEL (BYTES [n, 1]; a multi-label
model's LABELS, each row's labels as a JSON list; none for a relevance or similarity model) and
SCORES (FP32 [n, num_labels]) out, computed by deploykit's torch-free runtime (tokenizers +
onnxruntime) on the artifact copied into this version folder, by the head's own rule (softmax,
sigmoid and thresholds, or the score): the same tensors as deploykit's v2 route. For Triton builds
without the ONNX Runtime backend, and for the heads the ensemble does not serve. The Python backend's
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
        runtime = self.runtime
        names = ("TEXT", "TEXT_PAIR") if runtime.text_pair else ("TEXT",)
        responses = [None] * len(requests)
        texts, owners = [], []
        for n, request in enumerate(requests):
            try:
                columns = [[t.decode("utf-8") if isinstance(t, bytes) else str(t)
                            for t in pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)]
                           for name in names]
            except UnicodeDecodeError as exc:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{' and '.join(names)} must be UTF-8 text: {exc}"))
                continue
            if len({len(c) for c in columns}) > 1:
                responses[n] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("TEXT and TEXT_PAIR must hold as many texts "
                                               "(a pair with one side missing)"))
                continue
            rows = list(zip(*columns)) if runtime.text_pair else columns[0]
            texts.extend(rows)
            owners.extend([n] * len(rows))
        logits = runtime.logits(texts) if texts else np.zeros((0, len(runtime.labels)), dtype=np.float32)
        decisions = runtime.decisions
        scores = decisions.scores(logits).astype(np.float32)
        labels = decisions.label_strings(logits)
        label_output = None if decisions.score_head else ("LABELS" if decisions.multi_label else "LABEL")
        owners = np.asarray(owners, dtype=np.int64)
        for n in range(len(requests)):
            if responses[n] is not None:
                continue
            mine = np.flatnonzero(owners == n)
            tensors = [pb_utils.Tensor("SCORES", scores[mine].reshape(-1, len(runtime.labels)))]
            if label_output:
                tensors.insert(0, pb_utils.Tensor(label_output, np.array(
                    [labels[i].encode("utf-8") for i in mine], dtype=np.object_).reshape(-1, 1)))
            responses[n] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
