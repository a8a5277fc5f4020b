"""Triton Python-backend model written by deploykit: the whole token classifier in one model.

TEXT (BYTES [n, 1]) in; ENTITIES (BYTES [n, 1]) out, one JSON document per text: the entities with
character offsets (``entity_group``, ``score``, ``word``, ``start``, ``end``), computed by
deploykit's torch-free runtime (tokenizers + onnxruntime: windows of long texts, the transformers
pipeline's aggregation) on the artifact copied into this version folder. A request's
``aggregation`` parameter (none, simple, first, average, max) overrides the default. The Python
backend's environment needs deploykit installed without its dependencies plus what the runtime
imports:

    pip install --no-deps deploykit && pip install "numpy<2" onnxruntime tokenizers

All requests of one dynamic batch go to the runtime in one call; it batches their windows by its
token budget (rows sorted by length, padded to each batch's longest row).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from deploykit.tasks.token_classification.runtime import Runtime


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"], "artifact")
        threads = int(params.get("threads", "0")) or None
        providers = [p for p in params.get("providers", "").split(",") if p] or None
        self.runtime = Runtime(folder, params.get("variant") or None, threads=threads, providers=providers,
                               max_batch_size=int(config.get("max_batch_size") or 64))

    def _aggregation(self, request):
        try:
            value = json.loads(request.parameters() or "{}").get("aggregation")
        except (AttributeError, ValueError):
            value = None
        return self.runtime.check_aggregation(value)

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, owners, strategies = [], [], {}
        for n, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                decoded = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
                strategies[n] = self._aggregation(request)
            except (UnicodeDecodeError, ValueError) as exc:
                responses[n] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}"))
                continue
            texts.extend(decoded)
            owners.extend([n] * len(decoded))
        rows = self.runtime.tokenize(texts) if texts else []
        logits = self.runtime.logits_of(rows) if rows else []
        by_request = {}
        for n in strategies:
            mine = [i for i, owner in enumerate(owners) if owner == n]
            # Each request's texts with their own windows, aggregated as that request asked.
            index = {i: k for k, i in enumerate(mine)}
            own_rows = [r for r in rows if r.text in index]
            own_logits = [lg for r, lg in zip(rows, logits) if r.text in index]
            for r in own_rows:
                r.text = index[r.text]
            by_request[n] = self.runtime.entities([texts[i] for i in mine], own_rows, own_logits, strategies[n])
        for n in range(len(requests)):
            if responses[n] is not None:
                continue
            documents = [json.dumps(found).encode("utf-8") for found in by_request.get(n, [])]
            out = np.array(documents, dtype=np.object_).reshape(-1, 1)
            responses[n] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("ENTITIES", out)])
        return responses
