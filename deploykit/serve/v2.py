"""The Open Inference Protocol (KServe v2, what Triton speaks) on the service's own server.

Routes (``name`` is the manifest's): ``GET /v2``, ``GET /v2/health/live``,
``GET /v2/health/ready``, ``GET /v2/models/{name}[/versions/1]``,
``GET /v2/models/{name}[/versions/1]/ready`` and
``POST /v2/models/{name}[/versions/1]/infer`` taking a BYTES input ``TEXT`` of shape [n] or
[n, 1] (JSON data or the binary-tensor extension) and returning ``LABEL`` (BYTES [n]) and
``SCORES`` (FP32 [n, k], probabilities). ``tritonclient.http`` works against it unchanged.

This module is the codec (request parsing, response encoding, metadata); the routes that use
it are the served task's (``deploykit.serve.classify``), on the service's lean HTTP layer, so
requests go straight to the process's shared ``DynamicBatcher``: no second HTTP hop. The
protocol is parsed by hand because no maintained library offers a server-side parser of the v2
JSON + binary-tensor format outside Triton itself; the format is small and fixed. Every way a
body can break it is a ``ProtocolError`` (HTTP 400 ``{"error": ...}``, the shape tritonclient
reads), never an exception that would become a 500.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import orjson

from deploykit.serve.quoting import quote

log = logging.getLogger(__name__)

INPUT = "TEXT"
# A text-pair model's inputs: the two texts of each row (query and document, two sentences).
PAIR_INPUTS = ("TEXT", "TEXT_PAIR")
OUTPUTS = ("LABEL", "SCORES")
# A multi-label classifier's outputs: each row's chosen labels (a JSON list as one BYTES element) and
# every label's probability.
MULTI_LABEL_OUTPUTS = ("LABELS", "SCORES")
SCORE_OUTPUTS = ("SCORES",)  # a relevance or similarity model: one score per row, no label
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

    texts: list[Any]  # strings, or (text, text_pair) tuples for a model of two inputs
    request_id: str | None
    outputs: dict[str, bool]  # output name -> as binary data
    timeout_us: int | None = None  # the request's 'timeout' parameter (tritonclient's, microseconds)
    parameters: dict[str, Any] = field(default_factory=dict)  # the request's 'parameters' object
    columns: dict[str, list[str]] = field(default_factory=dict)  # every input's texts, by input name


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
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {quote(header_length)}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit the {len(body)}-byte body")
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        # orjson refuses invalid UTF-8, lone surrogates ("\ud800") and nesting deeper than 1024
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    return request, binary


def _texts_of(tensor: dict[str, Any], binary: bytes, max_texts: int, name: str = INPUT) -> tuple[list[str], int]:
    """The strings of one BYTES input and how many bytes of ``binary`` (what follows the JSON header,
    from this input's share on) its binary data took."""
    datatype = tensor.get("datatype")
    if datatype != "BYTES":
        raise ProtocolError(f"input {name} must have datatype BYTES, got {quote(datatype)}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1)):
        raise ProtocolError(f"input {name} must have shape [n] or [n, 1], got {quote(shape)}")
    n = shape[0]
    if n < 1:
        raise ProtocolError(f"input {name} holds no texts (shape {shape}); send at least one")
    if n > max_texts:
        raise ProtocolError(f"input {name} holds {n} texts, more than the limit of {max_texts} "
                            "(DEPLOYKIT_MAX_TEXTS); split the request")
    params = _parameters(tensor, f"input {name}")
    used = 0
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary):
            raise ProtocolError(f"input {name} declares binary_data_size {quote(size)} but {len(binary)} bytes "
                                f"follow the JSON header ({HEADER_LENGTH})")
        raw, used = deserialize_bytes(binary[:size]), size
        try:
            items = [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError:
            raise ProtocolError(f"input {name} holds bytes that are not valid UTF-8 text") from None
    else:
        used = 0
        data = tensor.get("data")
        if not isinstance(data, list):
            raise ProtocolError(f"input {name} needs a 'data' list (or binary data)")
        items = [x for row in data for x in row] if data and all(isinstance(r, list) for r in data) else data
        if not all(type(x) is str for x in items):
            raise ProtocolError(f"input {name} must hold strings only")
    if len(items) != n:
        raise ProtocolError(f"input {name} declares shape {shape} but holds {len(items)} elements")
    empty = [i for i, t in enumerate(items) if not t.strip()]
    if empty:
        raise ProtocolError(f"input {name} holds empty text at position(s) {empty[:10]}; send "
                            "non-empty strings")
    return items, used


def parse_infer(body: bytes, header_length: str | None, max_texts: int,
                offered: Sequence[str] = OUTPUTS, inputs: Sequence[str] = (INPUT,)) -> InferRequest:
    """Parse a v2 infer request body.

    Args:
        body: The raw HTTP body.
        header_length: The ``Inference-Header-Content-Length`` header (binary extension) or None.
        max_texts: Most texts accepted.
        offered: The outputs the served model has (a classifier's ``OUTPUTS``; a task's own).
        inputs: The BYTES inputs the model takes, in order (a classifier's ``TEXT``; a pair model's
            ``PAIR_INPUTS``; a reader's question and context), each of the same length; their binary
            data follow the JSON header in the request's order. With more than one, each row's
            texts come back as a tuple (and every input's in ``columns``).

    Returns:
        The texts (a tuple of each row's texts when the model takes several inputs; every input's
        also in ``columns``), the request id and the requested outputs.

    Raises:
        ProtocolError: On malformed JSON, a wrong input name, datatype or shape, or bad data.
    """
    request, binary = _split_body(body, header_length)
    tensors = request.get("inputs")
    wanted_inputs = " and ".join(inputs)
    if not isinstance(tensors, list) or len(tensors) != len(inputs) or not all(isinstance(t, dict) for t in tensors):
        count = "exactly one input," if len(inputs) == 1 else f"exactly {len(inputs)} inputs,"
        raise ProtocolError(f"the request must have {count} {wanted_inputs} (BYTES, shape [n])")
    names = [t.get("name") for t in tensors]
    unknown = [n for n in names if not isinstance(n, str) or n not in inputs]
    if unknown:
        raise ProtocolError(f"unknown input {quote(unknown[0])}; this model takes the input(s) {wanted_inputs}")
    if len(set(names)) != len(names):
        raise ProtocolError(f"input {quote(names[0])} is given twice; this model takes the input(s) {wanted_inputs}")
    columns, offset = {}, 0
    for tensor in tensors:  # binary data follows the header in the inputs' order
        columns[tensor["name"]], used = _texts_of(tensor, binary[offset:], max_texts, tensor["name"])
        offset += used
    if offset != len(binary):
        raise ProtocolError(f"{len(binary)} bytes follow the JSON header but the inputs' binary_data_size "
                            f"add up to {offset} ({HEADER_LENGTH})")
    if len({len(c) for c in columns.values()}) > 1:
        raise ProtocolError(f"inputs {wanted_inputs} hold {[len(columns[n]) for n in inputs]} texts; each row needs "
                            "one text of each (a pair with one side missing)")
    texts: list[Any] = list(zip(*(columns[n] for n in inputs))) if len(inputs) > 1 else columns[inputs[0]]
    params = _parameters(request, "the request")
    binary_default = _flag(params, "binary_data_output", False, "the request")
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        raise ProtocolError(f"parameter 'timeout' must be a positive integer of microseconds, got {quote(timeout)}")
    wanted = request.get("outputs")
    if wanted is None:
        outputs = {name: binary_default for name in offered}
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
            raise ProtocolError("'outputs' must be a list of objects with a 'name'")
        outputs = {}
        for o in wanted:
            name = o.get("name")
            if not isinstance(name, str) or name not in offered:
                raise ProtocolError(f"unknown output {quote(name)}; choose from {', '.join(offered)}")
            outputs[name] = _flag(_parameters(o, f"output {name}"), "binary_data", binary_default,
                                  f"output {name}")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, got {quote(request_id)}")
    return InferRequest(texts, request_id, outputs, timeout, params, columns)


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of the request, an input or an output (absent or null: empty)."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"'parameters' of {where} must be a JSON object, got "
                            f"{quote(params)}")
    return params


def _flag(params: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {key!r} of {where} must be true or false, got {quote(value)}")
    return value


def encode_response(model: str, req: InferRequest, labels: list[str],
                    probs: np.ndarray, label_output: str = "LABEL") -> tuple[bytes, dict[str, str]]:
    """Build the v2 infer response body and headers.

    Args:
        model: The model name.
        req: The parsed request (which outputs, binary or JSON).
        labels: The label of each text (multi-label: its chosen labels as one string).
        probs: float32 [n, k] probabilities.
        label_output: The labels' output name (``LABEL``; ``LABELS`` for a multi-label model).

    Returns:
        ``(body, headers)``; binary outputs follow the JSON header as the extension specifies.
    """
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    tensors = {
        label_output: ("BYTES", [len(labels)], lambda: labels,
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
    head_bytes = orjson.dumps(head)
    if not blobs:
        return head_bytes, {"Content-Type": "application/json"}
    return head_bytes + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                           HEADER_LENGTH: str(len(head_bytes))}


def model_metadata(name: str, num_labels: int, platform: str = "onnxruntime_onnx",
                   outputs: Sequence[str] = OUTPUTS, inputs: Sequence[str] = (INPUT,)) -> dict[str, Any]:
    """The v2 model metadata document: BYTES ``inputs`` (``TEXT``; a pair model's ``PAIR_INPUTS``),
    the labels' BYTES output if ``outputs`` has one (``LABEL``, or ``LABELS`` for a multi-label
    model) and ``SCORES`` (FP32 [n, num_labels])."""
    def tensor(output: str) -> dict[str, Any]:
        if output == "SCORES":
            return {"name": output, "datatype": "FP32", "shape": [-1, num_labels]}
        return {"name": output, "datatype": "BYTES", "shape": [-1]}

    return {"name": name, "versions": [VERSION], "platform": platform,
            "inputs": [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in inputs],
            "outputs": [tensor(n) for n in outputs]}
