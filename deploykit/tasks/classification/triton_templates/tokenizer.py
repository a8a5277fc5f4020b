"""Triton Python-backend model written by deploykit: TEXT -> the ONNX model's token inputs.

Input ``TEXT`` is BYTES with dims [1] (a batch is [n, 1]); the outputs are the ONNX graph's
integer inputs, each [n, max_length]. Every row is padded to the manifest's ``max_length``
(not to the batch's longest row) so that Triton's dynamic batcher can merge requests of
different lengths into one ONNX batch: it only concatenates tensors whose shapes agree. The
price is compute spent on padding; Triton's ragged batching is the alternative.

Needs only numpy and ``tokenizers`` in the Python backend's environment.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

# Used only when tokenizer.json carries no padding configuration (same rule as deploykit's runtime).
PAD_TOKENS = ("[PAD]", "<pad>")


def _parameters(config):
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        self.max_length = int(params["max_length"])
        self.names = params["inputs"].split(",")
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        padding = self.tokenizer.padding
        if padding:
            pad_id, pad_token = int(padding["pad_id"]), padding["pad_token"]
        else:
            found = [(self.tokenizer.token_to_id(t), t) for t in PAD_TOKENS]
            pad_id, pad_token = next(((i, t) for i, t in found if i is not None), (0, PAD_TOKENS[0]))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(length=self.max_length, pad_id=pad_id, pad_token=pad_token)
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(config, name)["data_type"])
            for name in self.names
        }

    def _encode(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return [pb_utils.Tensor(name, np.asarray(arrays[name], dtype=self.dtypes[name]))
                for name in self.names]

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            try:
                texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
            except UnicodeDecodeError as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"TEXT must be UTF-8 text: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=self._encode(texts)))
        return responses
