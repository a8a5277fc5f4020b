"""text-length on the service: ``POST /bucket`` ``{"texts": [...]}`` -> each text's bucket, on the
lean layer and deploykit's batcher."""

from __future__ import annotations

from typing import Any

import orjson

from deploykit.config import ServiceConfig
from deploykit.manifest import Manifest
from deploykit.serve.app import Call, HTTPError, Reply, Route, json_reply
from deploykit.serve.batcher import DynamicBatcher
from lengthtask.runtime import Runtime


class LengthBackend:
    def __init__(self, artifact: str, settings: ServiceConfig, metrics: Any) -> None:
        self.settings, self.metrics = settings, metrics
        self.runtime = Runtime(artifact, settings.variant, threads=settings.threads,
                               providers=settings.provider_list(), max_batch_tokens=settings.max_batch_tokens,
                               max_batch_size=settings.max_batch_size)
        self.batcher = DynamicBatcher(self.runtime, max_batch_size=settings.max_batch_size,
                                      max_batch_tokens=settings.max_batch_tokens, max_queue=settings.max_queue,
                                      metrics=metrics)
        self.name, self.draining = self.runtime.name, False

    def routes(self) -> list[Route]:
        return [Route("/bucket", ("POST",), bucket, "bucket", body=True, openapi={"post": {
            "summary": "The length bucket of each text", "operationId": "bucket",
            "responses": {"200": {"description": "One {bucket, score, words} per text."}}}})]

    def describe(self) -> str:
        return f"{self.name} (text-length, variant {self.runtime.variant}, buckets {self.runtime.labels})"

    def drain(self, timeout_s: float) -> None:
        self.draining = True
        self.batcher.drain()

    def close(self) -> None:
        self.batcher.close()


async def bucket(call: Call) -> Reply:
    backend: LengthBackend = call.backend
    try:
        texts = orjson.loads(call.body)["texts"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise HTTPError(400, 'send {"texts": [non-empty strings]}') from None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise HTTPError(400, 'send {"texts": [non-empty strings]}')
    results = await backend.batcher.classify(texts)
    return json_reply([{"bucket": r["label"], "score": r["score"], "words": len(t.split())}
                       for t, r in zip(texts, results)])


def load(artifact: str, settings: ServiceConfig, metrics: Any) -> LengthBackend:
    return LengthBackend(artifact, settings, metrics)


def preflight(artifact: str, variant: str, settings: ServiceConfig) -> None:
    Runtime(artifact, variant, threads=1, providers=settings.provider_list())


def bento_apis(settings: ServiceConfig) -> dict[str, Any]:
    return {}


def deployment_values(manifest: Manifest, variant: str) -> dict[str, str]:
    return {}
