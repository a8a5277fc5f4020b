"""Export: a checkpoint to a verified ONNX artifact folder (fp32, fused, INT8), and its re-check.

The stage is written once (``pipeline``: ``run`` and ``verify``) and calls the checkpoint's task
for what differs (its folder's ``export.py``). The shared machinery lives beside it: ONNX export
(``onnx_export``), graph optimization (``optimize``), quantization (``quantize``), the parity
result type and table (``parity``) and the provenance record (``provenance``).
"""

from deploykit.export.pipeline import run, verify

__all__ = ["run", "verify"]
