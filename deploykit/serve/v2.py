"""The Open Inference Protocol (KServe v2, what Triton speaks) on the service's own server.

Routes (``name`` is the manifest's): ``GET /v2``, ``GET /v2/health/live``,
``GET /v2/health/ready``, ``GET /v2/models/{name}[/versions/1]``,
``GET /v2/models/{name}[/versions/1]/ready`` and
``POST /v2/models/{name}[/versions/1]/infer`` taking a BYTES input ``TEXT`` of shape [n] or
[n, 1] (JSON data or the binary-tensor extension) and returning ``LABEL`` (BYTES [n]) and
``SCORES`` (FP32 [n, k], probabilities). ``tritonclient.http`` works against it unchanged.

Requests go straight to the process's shared ``DynamicBatcher``: no second HTTP hop.
The protocol is parsed by hand because no maintained library offers a server-side parser of
the v2 JSON + binary-tensor format outside Triton itself; the format is small and fixed.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

INPUT = "TEXT"
OUTPUTS = ("LABEL", "SCORES")
VERSION = "1"
HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(Exception):
    """A request the protocol refuses; carries the HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    """A parsed v2 infer request."""

    texts: list[str]
    request_id: str | None
    outputs: dict[str, bool]  # output name -> as binary data


def serialize_bytes(items: list[bytes]) -> bytes:
    """Triton's BYTES tensor wire format: each element as a uint32 little-endian length + bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def deserialize_bytes(buffer: bytes) -> list[bytes]:
    """Inverse of ``serialize_bytes``.

    Raises:
        ProtocolError: If the buffer is not a sequence of length-prefixed elements.
    """
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise ProtocolError("binary BYTES data of input TEXT is malformed (cut length prefix)")
        (size,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + size > len(buffer):
            raise ProtocolError("binary BYTES data of input TEXT is malformed (element overruns "
                                "the buffer)")
        items.append(buffer[offset:offset + size])
        offset += size
    return items


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit the {len(body)}-byte body")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("the request's JSON is not valid UTF-8") from None
    except ValueError as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    return request, binary


def _texts_of(tensor: dict[str, Any], binary: bytes, max_texts: int) -> list[str]:
    datatype = tensor.get("datatype")
    if datatype != "BYTES":
        raise ProtocolError(f"input {INPUT} must have datatype BYTES, got {datatype!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1)):
        raise ProtocolError(f"input {INPUT} must have shape [n] or [n, 1], got {shape!r}")
    n = shape[0]
    if n < 1:
        raise ProtocolError(f"input {INPUT} holds no texts (shape {shape}); send at least one")
    if n > max_texts:
        raise ProtocolError(f"input {INPUT} holds {n} texts, more than the limit of {max_texts} "
                            "(DEPLOYKIT_MAX_TEXTS); split the request")
    params = tensor.get("parameters") or {}
    if "binary_data_size" in params:
        raw = deserialize_bytes(binary)
        try:
            items = [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError:
            raise ProtocolError(f"input {INPUT} holds bytes that are not valid UTF-8 text") from None
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise ProtocolError(f"input {INPUT} needs a 'data' list (or binary data)")
        items = [x for row in data for x in row] if data and all(isinstance(r, list) for r in data) else data
        if not all(isinstance(x, str) for x in items):
            raise ProtocolError(f"input {INPUT} must hold strings only")
    if len(items) != n:
        raise ProtocolError(f"input {INPUT} declares shape {shape} but holds {len(items)} elements")
    empty = [i for i, t in enumerate(items) if not t.strip()]
    if empty:
        raise ProtocolError(f"input {INPUT} holds empty text at position(s) {empty[:10]}; send "
                            "non-empty strings")
    return items


def parse_infer(body: bytes, header_length: str | None, max_texts: int) -> InferRequest:
    """Parse a v2 infer request body.

    Args:
        body: The raw HTTP body.
        header_length: The ``Inference-Header-Content-Length`` header (binary extension) or None.
        max_texts: Most texts accepted.

    Returns:
        The texts, the request id and the requested outputs.

    Raises:
        ProtocolError: On malformed JSON, a wrong input name, datatype or shape, or bad data.
    """
    request, binary = _split_body(body, header_length)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"the request must have exactly one input, {INPUT} (BYTES, shape [n])")
    if inputs[0].get("name") != INPUT:
        raise ProtocolError(f"unknown input {inputs[0].get('name')!r}; this model takes one input "
                            f"named {INPUT}")
    texts = _texts_of(inputs[0], binary, max_texts)
    binary_default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    wanted = request.get("outputs")
    if wanted is None:
        outputs = {name: binary_default for name in OUTPUTS}
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
            raise ProtocolError("'outputs' must be a list of objects with a 'name'")
        outputs = {}
        for o in wanted:
            if o.get("name") not in OUTPUTS:
                raise ProtocolError(f"unknown output {o.get('name')!r}; choose from {', '.join(OUTPUTS)}")
            outputs[o["name"]] = bool((o.get("parameters") or {}).get("binary_data", binary_default))
    request_id = request.get("id")
    return InferRequest(texts, str(request_id) if request_id is not None else None, outputs)


def encode_response(model: str, req: InferRequest, labels: list[str],
                    probs: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """Build the v2 infer response body and headers.

    Args:
        model: The model name.
        req: The parsed request (which outputs, binary or JSON).
        labels: The label of each text.
        probs: float32 [n, k] probabilities.

    Returns:
        ``(body, headers)``; binary outputs follow the JSON header as the extension specifies.
    """
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    tensors = {
        "LABEL": ("BYTES", [len(labels)], lambda: labels,
                  lambda: serialize_bytes([label.encode("utf-8") for label in labels])),
        "SCORES": ("FP32", list(probs.shape), lambda: probs.reshape(-1).tolist(),
                   lambda: probs.astype("<f4").tobytes()),
    }
    outputs, blobs = [], []
    for name, binary in req.outputs.items():
        datatype, shape, as_json, as_binary = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = as_binary()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = as_json()
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": VERSION, "outputs": outputs}
    if req.request_id is not None:
        head["id"] = req.request_id
    head_bytes = json.dumps(head).encode("utf-8")
    if not blobs:
        return head_bytes, {"Content-Type": "application/json"}
    return head_bytes + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                           HEADER_LENGTH: str(len(head_bytes))}


def model_metadata(name: str, num_labels: int, platform: str = "onnxruntime_onnx") -> dict[str, Any]:
    """The v2 model metadata document."""
    return {"name": name, "versions": [VERSION], "platform": platform,
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "LABEL", "datatype": "BYTES", "shape": [-1]},
                        {"name": "SCORES", "datatype": "FP32", "shape": [-1, num_labels]}]}


def build_app(get_backend: Callable[[], Any], server_version: str) -> Any:
    """The Starlette app serving the v2 routes.

    Args:
        get_backend: Returns the loaded service (with ``runtime``, ``batcher``, ``settings``)
            or None while it is still loading.
        server_version: Reported by ``GET /v2``.

    Returns:
        A Starlette application (mounted at ``/`` of the BentoML server, routes under ``/v2``).
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from deploykit.runtime import softmax
    from deploykit.serve.batcher import QueueFullError

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def backend_for(request: Request) -> Any:
        backend = get_backend()
        if backend is None:
            raise ProtocolError("the model is still loading", 503)
        name = request.path_params.get("name")
        if name is not None and name != backend.runtime.name:
            raise ProtocolError(f"unknown model {name!r}; this server serves {backend.runtime.name!r}", 404)
        version = request.path_params.get("version")
        if version is not None and version != VERSION:
            raise ProtocolError(f"unknown version {version!r} of model {name!r}; available: {VERSION}", 404)
        return backend

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "deploykit", "version": server_version,
                             "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if get_backend() is not None else 503)

    async def metadata(request: Request) -> Response:
        try:
            backend = backend_for(request)
        except ProtocolError as exc:
            return error(str(exc), exc.status)
        return JSONResponse(model_metadata(backend.runtime.name, len(backend.runtime.labels)))

    async def model_ready(request: Request) -> Response:
        try:
            backend_for(request)
        except ProtocolError as exc:
            return error(str(exc), exc.status)
        return Response(status_code=200)

    async def infer(request: Request) -> Response:
        try:
            backend = backend_for(request)
            body = await request.body()
            req = parse_infer(body, request.headers.get(HEADER_LENGTH), backend.settings.max_texts)
            _, logits = await backend.batcher.submit(req.texts)
        except ProtocolError as exc:
            return error(str(exc), exc.status)
        except QueueFullError as exc:
            return error(str(exc), 503)
        probs = softmax(logits)
        labels = [backend.runtime.labels[i] for i in probs.argmax(axis=-1)]
        body, headers = encode_response(backend.runtime.name, req, labels, probs)
        return Response(body, headers=headers)

    routes = [Route("/v2", server_metadata), Route("/v2/health/live", live),
              Route("/v2/health/ready", ready)]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [Route(prefix, metadata), Route(prefix + "/ready", model_ready),
                   Route(prefix + "/infer", infer, methods=["POST"])]
    return Starlette(routes=routes)
