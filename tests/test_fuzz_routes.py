"""Bounded property-based fuzzing of every inference route on a real server (docs/serving.md).

Each case is a request its clients really send (v2 JSON or binary-tensor bodies, /generate, the
OpenAI routes) mutated at one to three places (tests/fuzz_bodies.py); it goes to `deploykit
serve` on a free 127.0.0.1 port over one keep-alive connection. No answer may be a 5xx (a 504
only for a deadline the body set itself), every refusal is JSON with an ``error``, the log holds
no traceback, and a good request is answered correctly afterwards. Schemathesis covers the
generation routes from /docs.json as it does the classification ones (tests/test_overload.py).

The number of examples is bounded for CI (``DEPLOYKIT_FUZZ_EXAMPLES``, default 2,000 per
test); ``benchmarks/fuzz_routes.py`` runs the same strategies at 20,000. Each run draws a new
seed (printed on failure; ``DEPLOYKIT_FUZZ_SEED`` replays one).
"""

from __future__ import annotations

import json
import os

import pytest

from deploykit.runtime import Runtime
from fuzz_bodies import SEED, Case, Client, fuzz, generation_case, has_traceback, schemathesis_no_5xx, v2_case
from test_serve import post_json, start_server, stop_server

EXAMPLES = int(os.environ.get("DEPLOYKIT_FUZZ_EXAMPLES", "2000"))
MAX_NEW = 6
GOOD = ["I love it", "what a terrible day"]


@pytest.fixture(scope="module")
def v2_server(serve_artifact, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-v2")
    proc, url = start_server(serve_artifact, folder, "--max-texts", "8")
    yield url, folder / "server.log"
    stop_server(proc)


@pytest.fixture(scope="module")
def generation_server(generation_artifacts, tmp_path_factory):
    _, artifact = generation_artifacts["llama"]
    folder = tmp_path_factory.mktemp("fuzz-generation")
    proc, url = start_server(artifact, folder, "--max-new-tokens", str(MAX_NEW), "--max-batch-size", "4")
    yield url, folder / "server.log", "tiny-llama"
    stop_server(proc)


def test_the_multibyte_parameters_of_issue_30_are_a_400(v2_server):
    """The request that got a 500: input 'parameters' a list of one ASCII and twenty 2-byte
    characters, so that the message's old cut at 40 UTF-8 bytes (``["x`` and 18.5 of them)
    split one."""
    url, _ = v2_server
    body = ('{"inputs":[{"name":"TEXT","datatype":"BYTES","shape":[1],"data":["a"],"parameters":["x%s"]}]}'
            % ("\u00c2" * 20)).encode()
    status, answer, _ = Client(url).send(Case("/v2/models/classifier/infer", body))
    assert status == 400, answer
    assert "'parameters' of input TEXT must be a JSON object" in json.loads(answer)["error"]


def test_fuzzed_v2_bodies_never_get_a_5xx(v2_server, serve_artifact):
    url, log = v2_server
    statuses = fuzz(url, v2_case(), EXAMPLES)
    print(f"v2 fuzz, seed {SEED}: {sorted(statuses.items())}")
    # The mutations reach both the refusals and the model (some mutated requests stay valid).
    assert statuses.get(400, 0) > EXAMPLES // 4 and statuses.get(200, 0) > EXAMPLES // 100, statuses
    status, results = post_json(url + "/classify", {"texts": GOOD})
    assert status == 200 and [r["label"] for r in results] == \
        [r["label"] for r in Runtime(serve_artifact, "opt").predict(GOOD)]
    text = log.read_text()
    assert not has_traceback(text) and "[ERROR]" not in text, text[-3000:]


def test_fuzzed_generation_bodies_never_get_a_5xx(generation_server):
    url, log, model = generation_server
    statuses = fuzz(url, generation_case(model, MAX_NEW), EXAMPLES)
    print(f"generation fuzz, seed {SEED}: {sorted(statuses.items())}")
    assert statuses.get(400, 0) > EXAMPLES // 4 and statuses.get(200, 0) > EXAMPLES // 100, statuses
    status, answer = post_json(url + "/generate", {"prompt": "translate: red cat =", "max_new_tokens": 3})
    assert status == 200 and answer["usage"]["completion_tokens"] >= 1
    text = log.read_text()
    assert not has_traceback(text) and "[ERROR]" not in text, text[-3000:]


def test_schemathesis_finds_no_5xx_on_the_generation_routes(generation_server):
    url, log, _ = generation_server
    seen = schemathesis_no_5xx(url, max_examples=10)
    paths = {path for _, path, _ in seen}
    assert {"/generate", "/v1/completions", "/v1/chat/completions", "/v1/models"} <= paths, paths
    assert {status for *_, status in seen} & {400, 404}
    assert not has_traceback(log.read_text())
