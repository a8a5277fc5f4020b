"""Triton Python-backend model written by deploykit: the whole reader in one model.

QUESTION and CONTEXT (BYTES [n, 1]) in; ANSWER (BYTES), SCORE (FP32), START and END (INT64) [n, 1] out:
each question's best answer with character offsets into its context (an empty answer at 0-0 when the
question has none), computed by deploykit's torch-free runtime (tokenizers + onnxruntime: windows of long
contexts, the transformers pipeline's answer search, the manifest's null threshold) on the artifact copied
into this version folder. The Python backend's environment needs deploykit installed without its
dependencies plus what the runtime imports:

    pip install --no-deps deploykit && pip install "numpy<2" onnxruntime tokenizers

All requests of one dynamic batch go to the runtime in one call; it batches their windows by its token
budget (rows sorted by length, padded to each batch's longest row).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from deploykit.tasks.question_answering.runtime import Runtime


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"], "artifact")
        threads = int(params.get("threads", "0")) or None
        providers = [p for p in params.get("providers", "").split(",") if p] or None
        self.runtime = Runtime(folder, params.get("variant") or None, threads=threads, providers=providers,
                               max_batch_size=int(config.get("max_batch_size") or 64))

    def execute(self, requests):
        responses = [None] * len(requests)
        questions, contexts, owners = [], [], []
        for n, request in enumerate(requests):
            try:
                pair = []
                for name in ("QUESTION", "CONTEXT"):
                    raw = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
                    pair.append([t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw])
                # Refused here, by request, rather than failing the whole batch.
                self.runtime.tokenize(*pair)
            except Exception as exc:  # a bad request: undecodable, empty, too long a question
                responses[n] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}"))
                continue
            questions.extend(pair[0])
            contexts.extend(pair[1])
            owners.extend([n] * len(pair[0]))
        found = self.runtime.predict(questions, contexts) if questions else []
        for n in range(len(requests)):
            if responses[n] is not None:
                continue
            best = [f[0] for f, owner in zip(found, owners) if owner == n]
            tensors = [
                pb_utils.Tensor("ANSWER", np.array([a["answer"].encode("utf-8") for a in best], dtype=np.object_).reshape(-1, 1)),
                pb_utils.Tensor("SCORE", np.array([a["score"] for a in best], dtype=np.float32).reshape(-1, 1)),
                pb_utils.Tensor("START", np.array([a["start"] for a in best], dtype=np.int64).reshape(-1, 1)),
                pb_utils.Tensor("END", np.array([a["end"] for a in best], dtype=np.int64).reshape(-1, 1)),
            ]
            responses[n] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
