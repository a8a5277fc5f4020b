"""A stand-in of Triton's Python-backend module (``triton_python_backend_utils``), enough to run a
generated ``model.py`` in process on real inputs: tensors, responses and errors as plain objects."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any


class Tensor:
    def __init__(self, name: str, array: Any) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> Any:
        return self.array


class Response:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: str | None = None) -> None:
        self.tensors, self.error = {t.name: t.array for t in output_tensors or []}, error


def load_model(model_folder: Path, monkeypatch: Any, parameters: dict[str, str]) -> Any:
    """The ``TritonPythonModel`` of ``model_folder`` (its ``1/model.py``), initialised as Triton would,
    with the stand-in module in ``sys.modules`` (through ``monkeypatch``, so it goes afterwards).

    Args:
        model_folder: The repository's model folder.
        monkeypatch: pytest's fixture.
        parameters: The config's parameters (string values).
    """
    stub = types.SimpleNamespace(Tensor=Tensor, InferenceResponse=Response, TritonError=str,
                                 get_input_tensor_by_name=lambda request, name: request[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    spec = importlib.util.spec_from_file_location(f"{model_folder.name}_model", model_folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"max_batch_size": 8, "parameters": {
        k: {"string_value": v} for k, v in parameters.items()}}),
        "model_repository": str(model_folder), "model_version": "1"})
    return model
