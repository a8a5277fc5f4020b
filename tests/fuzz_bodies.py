"""Hypothesis strategies for hostile request bodies: a valid request with 1-3 mutations.

Shared by the suite's bounded fuzz (tests/test_fuzz_routes.py) and the long benchmark run
(benchmarks/fuzz_routes.py). A case starts from a request the route accepts, as its clients
send it (the v2 protocol's JSON or binary-tensor bodies, /generate, the OpenAI routes), and
changes it at one to three places, each either in the JSON tree (a node replaced by any JSON
value, a key or item removed, a key added) or in the bytes on the wire (bytes replaced,
inserted or cut, a hostile token such as a lone-surrogate escape or a split UTF-8 character
spliced in, the binary part's declared length changed). Mutating valid requests reaches the
checks deep in a parser, which random bytes never get past.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import random
import socket
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

# Texts that break naive code: multi-byte characters (the 500 of issue 30 was a cut through
# one), control characters, right-to-left marks, astral characters, long runs.
MULTIBYTE = st.text(st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=["Cs"]),
                    min_size=1, max_size=40)
MIXED = st.lists(st.sampled_from(["a", " ", "\u00c2", "\u20ac", "\U0001f600", "\u202e", "\x1f", '"', "\\"]),
                 min_size=10, max_size=60).map("".join)
TEXT = st.one_of(MIXED, MULTIBYTE, st.text(max_size=30), st.sampled_from(["\u00c2" * 20, "x" + "\u00c2" * 20, "\x00",
                                                                           " ", "", "\U0001f600" * 15, "a" * 300]))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 300),
                   st.floats(allow_nan=False, allow_infinity=False), TEXT)
# Any JSON value, strings and lists of strings as often as the rest (what a message may quote).
VALUE = st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3),
                  st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(TEXT, inner, max_size=4)),
                               max_leaves=8))
# The keys the routes read: a mutation that adds one (with any value) reaches the checks of that
# key, which a random key never does.
KEYS = ["parameters", "id", "outputs", "inputs", "name", "datatype", "shape", "data", "binary_data_size",
        "binary_data", "binary_data_output", "timeout", "model", "prompt", "messages", "role", "content",
        "max_tokens", "max_new_tokens", "max_completion_tokens", "stream", "stream_options", "include_usage",
        "stop", "temperature", "top_p", "top_k", "seed", "n", "user", "ignore_eos", "presence_penalty",
        "query", "texts", "pairs", "documents", "top_n", "truncate", "truncation_direction", "raw_scores",
        "return_text", "return_documents", "text"]
# Long values of mixed-width characters in every JSON shape: what an error message that quotes
# the client's value must cut without breaking a character.
QUOTED = st.one_of(MIXED, st.lists(MIXED, min_size=1, max_size=3), st.dictionaries(MIXED, MIXED, min_size=1,
                                                                                   max_size=2))
# Byte-level tokens spliced into a body: escapes orjson/jiter refuse, half characters, JSON
# punctuation, numbers out of range, deep nesting.
TOKENS = [b'\\ud800', b'"\\udfff"', b'\xc3', b'\xe2\x82', b'\xff\xfe', b'\x00', b'"', b"{", b"}", b"[", b"]",
          b",", b":", b"1e999", b"-0", b"NaN", b"Infinity", b"null", b"true", b'"\\u0000"',
          b"18446744073709551616", b"[" * 300, b"\xc2" * 20]


@dataclass
class Case:
    """One request: method, path, body and extra headers."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    mutations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.method} {self.path} {self.headers} {self.mutations} body={self.body[:300]!r}"


def dumps(doc: Any, ascii_only: bool) -> bytes:
    """JSON bytes as a client writes them (surrogates, if any, kept as they are)."""
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every node's path in a JSON tree (the root is ``()``)."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def mutate_tree(data: st.DataObject, doc: Any) -> tuple[Any, str]:
    """One change to a JSON tree (in place where possible); returns the tree and what changed."""
    paths = _paths(doc)
    if data.draw(st.booleans(), label="a named field"):  # half the time a field the route reads by name
        paths = [p for p in paths if p and isinstance(p[-1], str)] or paths
    kind = data.draw(st.sampled_from(["replace", "remove", "add", "retext"]), label="tree mutation")
    if kind == "retext":  # a string swapped for a hostile one: often still a valid request
        texts = [p for p in paths if p and isinstance(_parent(doc, p)[p[-1]], str)]
        if texts:
            path = data.draw(st.sampled_from(texts), label="text path")
            _parent(doc, path)[path[-1]] = data.draw(TEXT, label="text")
            return doc, f"retext at {list(path)}"
        kind = "replace"
    path = data.draw(st.sampled_from(paths), label="path")
    if not path:  # the root: replace it
        return data.draw(VALUE, label="new root"), "root replaced"
    parent, key = _parent(doc, path), path[-1]
    if kind == "replace":
        parent[key] = data.draw(st.one_of(VALUE, QUOTED), label="value")
    elif kind == "remove":
        del parent[key]
    else:
        target = parent[key]
        if isinstance(target, dict):
            key = data.draw(st.one_of(st.sampled_from(KEYS), TEXT), label="new key")
            target[key] = data.draw(VALUE, label="new value")
        elif isinstance(target, list):
            target.insert(data.draw(st.integers(0, len(target))), data.draw(VALUE, label="new item"))
        else:
            parent[key] = [target, data.draw(VALUE, label="sibling")]
    return doc, f"{kind} at {list(path)}"


def mutate_bytes(data: st.DataObject, body: bytes) -> tuple[bytes, str]:
    """One change to the bytes of a body."""
    kind = data.draw(st.sampled_from(["token", "replace", "insert", "cut"]), label="byte mutation")
    at = data.draw(st.integers(0, len(body)), label="offset")
    if kind == "token":
        token = data.draw(st.sampled_from(TOKENS), label="token")
        end = at + data.draw(st.integers(0, 3), label="replaced")
        return body[:at] + token + body[end:], f"token {token[:12]!r} at {at}"
    if kind == "cut":
        return body[:at], f"cut at {at}"
    blob = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
    end = at + (len(blob) if kind == "replace" else 0)
    return body[:at] + blob + body[end:], f"{kind} {blob!r} at {at}"


def mutated_json(data: st.DataObject, path: str, doc: Any, headers: dict[str, str] | None = None) -> Case:
    """``doc`` at ``path`` with 1-3 mutations, each in the tree or in the bytes."""
    mutations: list[str] = []
    body: bytes | None = None
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if body is None and data.draw(st.integers(0, 2), label="in the tree") > 0:  # 2 in 3: the tree
            doc, what = mutate_tree(data, doc)
        else:
            if body is None:
                body = dumps(doc, data.draw(st.booleans(), label="ascii"))
            body, what = mutate_bytes(data, body)
        mutations.append(what)
    if body is None:
        body = dumps(doc, data.draw(st.booleans(), label="ascii"))
    return Case(path, body, dict(headers or {}), mutations=mutations)


# --- the v2 route ------------------------------------------------------------------------------

def v2_texts() -> st.SearchStrategy[list[str]]:
    return st.lists(st.text(min_size=1, max_size=30).filter(str.strip), min_size=1, max_size=4)


@st.composite
def v2_case(draw: Any, model: str = "classifier") -> Case:
    """A v2 infer request (JSON data or the binary-tensor extension), mutated at 1-3 places."""
    data = draw(st.data())
    texts = draw(v2_texts(), label="texts")
    binary = draw(st.booleans(), label="binary")
    tensor: dict[str, Any] = {"name": "TEXT", "datatype": "BYTES",
                              "shape": draw(st.sampled_from([[len(texts)], [len(texts), 1]]), label="shape")}
    doc: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans(), label="with outputs"):
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": draw(st.booleans())}}
                          for n in draw(st.sampled_from([["LABEL"], ["SCORES"], ["LABEL", "SCORES"]]))]
    if draw(st.booleans(), label="with input parameters"):
        tensor["parameters"] = {}  # (the binary form declares its size there)
    if draw(st.booleans(), label="with parameters"):
        doc["parameters"] = {"binary_data_output": draw(st.booleans()), "timeout": 30_000_000}
    if draw(st.booleans(), label="with id"):
        doc["id"] = draw(TEXT)
    path = f"/v2/models/{model}" + draw(st.sampled_from(["", "/versions/1"])) + "/infer"
    if not binary:
        tensor["data"] = texts
        return mutated_json(data, path, doc)
    blob = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)
    tensor["parameters"] = {**tensor.get("parameters", {}), "binary_data_size": len(blob)}
    mutations: list[str] = []
    head_doc: Any = doc
    head: bytes | None = None
    declared: str | None = None
    for _ in range(draw(st.integers(1, 3), label="mutations")):
        where = draw(st.sampled_from(["tree", "head bytes", "blob", "declared length"]), label="where")
        if where == "tree" and head is None:
            head_doc, what = mutate_tree(data, head_doc)
        elif where == "blob":
            blob, what = mutate_bytes(data, blob)
        elif where == "declared length":
            declared = draw(st.one_of(st.integers(-5, 10_000).map(str), TEXT.filter(lambda s: s.isprintable()
                                                                                     and s.isascii())),
                            label="declared")
            what = f"header length {declared!r}"
        else:
            if head is None:
                head = dumps(head_doc, True)
            head, what = mutate_bytes(data, head)
        mutations.append(what)
    if head is None:
        head = dumps(head_doc, draw(st.booleans(), label="ascii"))
    length = declared if declared is not None else str(len(head))
    return Case(path, head + blob, {"Inference-Header-Content-Length": length}, mutations=mutations)


# --- the text-pair routes ----------------------------------------------------------------------

@st.composite
def pair_case(draw: Any, model: str = "reranker") -> Case:
    """A request to a text-pair model (``/classify`` with pairs, text-embeddings-inference's
    ``/rerank``, the Cohere-style ``/v1/rerank``, or v2 with TEXT and TEXT_PAIR), mutated at 1-3
    places."""
    data = draw(st.data())
    texts = draw(v2_texts(), label="texts")
    query = draw(st.text(min_size=1, max_size=30).filter(str.strip), label="query")
    route = draw(st.sampled_from(["/classify", "/rerank", "/v1/rerank", "v2"]), label="route")
    doc: dict[str, Any]
    if route == "/classify":
        doc = {"pairs": [[query, t] for t in texts]}
    elif route == "/rerank":
        doc = {"query": query, "texts": texts}
        for key in ("truncate", "raw_scores", "return_text"):
            if draw(st.booleans(), label=key):
                doc[key] = draw(st.booleans())
        if draw(st.booleans(), label="direction"):
            doc["truncation_direction"] = draw(st.sampled_from(["Left", "Right"]))
    elif route == "/v1/rerank":
        documents: list[Any] = [t if draw(st.booleans()) else {"text": t} for t in texts]
        doc = {"model": model, "query": query, "documents": documents}
        if draw(st.booleans(), label="top_n"):
            doc["top_n"] = draw(st.integers(1, 6))
    else:
        route = f"/v2/models/{model}/infer"
        doc = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts)], "data": [query] * len(texts)},
                          {"name": "TEXT_PAIR", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    return mutated_json(data, route, doc)


# --- the generation routes -------------------------------------------------------------------

MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                           "content": st.text(max_size=20)}), min_size=1, max_size=3)


@st.composite
def generation_case(draw: Any, model: str, max_new_tokens: int) -> Case:
    """A /generate, /v1/completions or /v1/chat/completions request mutated at 1-3 places."""
    data = draw(st.data())
    route = draw(st.sampled_from(["/generate", "/v1/completions", "/v1/chat/completions"]), label="route")
    tokens = draw(st.integers(1, max_new_tokens), label="tokens")
    sampling: dict[str, Any] = {}
    if draw(st.booleans(), label="sampled"):
        sampling = {"temperature": draw(st.floats(0, 2)), "top_p": draw(st.floats(0.1, 1)), "seed": 3}
    if draw(st.booleans(), label="stream"):
        sampling["stream"] = True
    if route == "/generate":
        doc: dict[str, Any] = {"max_new_tokens": tokens, **sampling}
        if draw(st.booleans(), label="chat"):
            doc["messages"] = draw(MESSAGES)
        else:
            doc["prompt"] = draw(st.text(min_size=1, max_size=30).filter(str.strip))
    elif route == "/v1/completions":
        doc = {"model": model, "prompt": draw(st.text(min_size=1, max_size=30).filter(str.strip)),
               "max_tokens": tokens, **sampling}
    else:
        doc = {"model": model, "messages": draw(MESSAGES), "max_tokens": tokens, **sampling}
    if draw(st.booleans(), label="stop"):
        doc["stop"] = draw(st.sampled_from([".", ["x", "y"]]))
    return mutated_json(data, route, doc, {"Content-Type": "application/json"})


@st.composite
def json_case(draw: Any, route: str, body: Any) -> Case:
    """Any route's JSON request (a task's ``example.request``) mutated at 1-3 places."""
    return mutated_json(draw(st.data()), route, copy.deepcopy(body), {"Content-Type": "application/json"})


# --- the client ------------------------------------------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection to the server, opened again whenever the server closed
    it (after a 413, a 408, or a request the HTTP parser refused)."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self.conn: http.client.HTTPConnection | None = None

    def send(self, case: Case) -> tuple[int, bytes, dict[str, str]]:
        """Send a case; returns (status, body, headers); status 0 if the server closed the
        connection without an answer (uvicorn does that for bytes its HTTP parser refuses)."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(case.method, case.path, body=case.body,
                                  headers={"Content-Type": "application/json", **case.headers})
                response = self.conn.getresponse()
                body = response.read()
                headers = {k.lower(): v for k, v in response.getheaders()}
                if response.will_close:
                    self.close()
                return response.status, body, headers
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:  # refused twice: the request itself is what the server would not read
                    return 0, b"", {}
            except (socket.timeout, TimeoutError):
                self.close()
                raise
        return 0, b"", {}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --- the check -------------------------------------------------------------------------------

def has_traceback(log: str) -> bool:
    """Whether a server log holds a Python traceback. Its header line, not the word alone: the
    fuzzed inputs, quoted back in the 400s' log lines, may hold "Traceback" (Hypothesis draws
    strings from the constants of the code it runs, this suite's included)."""
    return "Traceback (most recent call last)" in log


# A new seed each run (printed with any failure); DEPLOYKIT_FUZZ_SEED replays one.
SEED = int(os.environ.get("DEPLOYKIT_FUZZ_SEED") or random.randrange(2**32))


def check_answer(case: Case, status: int, body: bytes) -> None:
    """No 5xx (a 504 only for the body's own ``timeout``), and every refusal is ``{"error": ...}``."""
    where = f"seed {SEED}: {case.describe()} -> {status} {body[:300]!r}"
    assert status != 0, "the server closed the connection without an answer: " + where
    own_deadline = status == 504 and b"timeout" in case.body
    assert status < 500 or own_deadline, where
    if status >= 400:  # {"error": message}, or the OpenAI routes' {"error": {"message": ...}}
        error = json.loads(body).get("error")
        assert isinstance(error, str) or isinstance(error.get("message"), str), where


def fuzz(url: str, strategy: st.SearchStrategy[Case], examples: int) -> dict[int, int]:
    """Send ``examples`` cases drawn from ``strategy`` to the server at ``url``, each checked with
    ``check_answer`` (the first failure raises, naming the seed and the case); returns how many
    answers had each status."""
    client, statuses = Client(url), {}

    @seed(SEED)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Case) -> None:
        status, body, _ = client.send(case)
        statuses[status] = statuses.get(status, 0) + 1
        check_answer(case, status, body)

    try:
        run()
    finally:
        client.close()
    return statuses


# --- schemathesis over /docs.json ------------------------------------------------------------

def schemathesis_no_5xx(url: str, max_examples: int = 12, headers: dict[str, str] | None = None
                        ) -> list[tuple[str, str, int]]:
    """Schemathesis reads the server's /docs.json and sends valid (positive) and invalid
    (negative) requests to every operation, ``max_examples`` each way: none may get a 5xx (a
    504 only for a deadline the case set itself with X-Request-Timeout), and every refusal is
    JSON with an ``error``. Returns (method, path, status) of every request sent.

    Args:
        url: The server's base URL.
        max_examples: Requests per operation and mode.
        headers: Sent with every request (e.g. an API key).
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    headers = headers or {}
    schema = schemathesis.openapi.from_url(url + "/docs.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: list[tuple[str, str, int]] = []
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(mode))
            def check(case):
                response = case.call(base_url=url, timeout=30, headers=headers)
                seen.append((case.method, case.path, response.status_code))
                # 504 answers a deadline the client set itself (X-Request-Timeout), not bad input.
                own_deadline = response.status_code == 504 and "X-Request-Timeout" in (case.headers or {})
                assert response.status_code < 500 or own_deadline, (
                    case.method, case.formatted_path, response.status_code, response.text[:300])
                if response.status_code >= 400 and case.path not in ("/readyz", "/livez"):
                    assert "error" in response.json()

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid in an operation without parameters
                assert mode == schemathesis.GenerationMode.NEGATIVE
    return seen
