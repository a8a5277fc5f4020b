"""A text-generation artifact through the deployment commands: the Kubernetes overlay takes its
settings and memory request from the manifest, and a bento packs it without torch."""

from __future__ import annotations

import pytest

from deploykit.config import ServiceConfig
from deploykit.deploy import validate
from deploykit.manifest import Manifest
from test_k8s import by_kind, cli, needs_kubectl


@needs_kubectl
def test_k8s_overlay_sizes_the_pod_from_the_manifest(generation_artifacts, tmp_path):
    _, artifact = generation_artifacts["gpt2"]
    proc = cli("k8s", "--image", "reg.example.com/gen:1", "--artifact", str(artifact), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    docs = validate.kustomize_build(tmp_path / "o")
    assert validate.validate_documents(docs) == []
    dep = by_kind(docs)["Deployment"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    manifest = Manifest.read(artifact)
    assert env["DEPLOYKIT_VARIANT"] == manifest.default_variant
    assert env["DEPLOYKIT_MAX_CACHE_TOKENS"] == str(ServiceConfig().max_cache_tokens)
    assert env["DEPLOYKIT_MAX_BATCH_SIZE"] == "32"
    assert dep["spec"]["template"]["metadata"]["annotations"]["deploykit.io/model"] == "tiny-gpt2"
    # twice the served weights + twice the cache at its bound + 512 MiB, in 64 MiB steps
    weights = sum(manifest.files[f].bytes for f in manifest.files_of(manifest.default_variant))
    cache = ServiceConfig().max_cache_tokens * 2 * 2 * 4 * 8 * 4  # tokens x (k, v) x layers x heads x size x fp32
    mib = (2 * weights + 2 * cache) / 2**20 + 512
    request = int(-(-mib // 64) * 64)
    assert container["resources"]["requests"]["memory"] == f"{request}Mi"
    assert container["resources"]["limits"]["memory"] == f"{2 * request}Mi"
    # the probes are the base's (the service answers them for every task)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.slow
def test_build_packs_a_generation_artifact_and_the_bento_serves_it(generation_artifacts, tmp_path):
    import sys

    from deploykit.tasks.generation.runtime import Generator
    from test_serve import post_json, start_server, stop_server

    _, artifact = generation_artifacts["qwen2"]
    home = tmp_path / "bentoml"
    result = cli("build", str(artifact), "--bentoml-home", str(home), "--tag", "deploykit-gen:v1")
    assert result.returncode == 0, result.stderr[-3000:]
    bento = home / "bentos" / "deploykit-gen" / "v1"
    requirements = (bento / "env/python/requirements.txt").read_text().lower()
    assert "torch" not in requirements and "transformers" not in requirements
    packed = bento / "src/artifact"
    manifest = Manifest.verify(packed)
    assert manifest.task == "text-generation" and list(manifest.variants) == [manifest.default_variant]
    proc, url = start_server(None, tmp_path, argv=[sys.executable, "-m", "bentoml", "serve", "deploykit-gen:v1",
                                                   "--host", "127.0.0.1"],
                             env={"BENTOML_HOME": str(home), "DEPLOYKIT_ARTIFACT": ""})
    try:
        status, body = post_json(url + "/generate", {"prompt": "translate: red =", "max_new_tokens": 6})
    finally:
        stop_server(proc)
    assert status == 200
    assert body["text"] == Generator(packed).generate(["translate: red ="], max_new_tokens=6)[0].text
