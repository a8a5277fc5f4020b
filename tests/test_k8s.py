"""The Kubernetes manifests: strict schema validation, kustomize builds, the rendered overlays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factories import hand_made_artifact

from deploykit.config import KubeConfig
from deploykit.deploy import autoscale, k8s, validate
from deploykit.deploy import crd as pinned_crds

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
needs_kubectl = pytest.mark.usefixtures("kubectl")  # tests/outside_tools.py: fail in CI, else skip
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", "training", "trainjob", "batch"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploykit", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def write_manifest(folder: Path, variants=("int8", "opt", "fp32")) -> Path:
    """A hand-made artifact (max_length 96); rendering reads its manifest.json and nothing else."""
    return hand_made_artifact(folder, {v: True for v in variants})


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """Overlays rendered by the real command: CPU from an artifact, GPU, training."""
    tmp = tmp_path_factory.mktemp("rendered")
    artifact = write_manifest(tmp / "artifact")
    runs = {
        "cpu": ["--image", "reg.example.com/team/deploykit:1.2", "--artifact", str(artifact),
                "--namespace", "ml", "--replicas", "3", "--cpu", "500m", "--memory", "1Gi"],
        "gpu": ["--image", "reg.example.com/team/deploykit@sha256:" + "a" * 64, "--gpu",
                "--artifact", str(artifact)],
        "train": ["--train", "--image", "reg.example.com/deploykit-train:1.2", "--nodes", "3",
                  "--nproc-per-node", "2", "--train-args=--max-steps 5 --out /runs/r1"],
    }
    out = {}
    for name, args in runs.items():
        proc = cli("k8s", *args, "--out", str(tmp / name))
        assert proc.returncode == 0, proc.stderr
        out[name] = tmp / name
    return out


def test_every_plain_manifest_validates_strictly():
    files = [p for p in K8S.rglob("*.yaml") if "overlays" not in p.parts]  # overlay files are patches
    docs = [d for p in files for d in validate.load_documents(p) if d["kind"] != "Kustomization"]
    docs, custom = pinned_crds.custom(docs)  # the operators' kinds: against their pinned CRDs (k8s/crds)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Deployment", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "NetworkPolicy", "Job", "Service",
                            "PersistentVolumeClaim", "PersistentVolumeClaim"])
    assert validate.versions()[0] == "1.29" and len(validate.versions()) == 2
    assert validate.validate_documents(docs) == []
    assert sorted(d["kind"] for d in custom) == ["RayJob", "TrainJob"] and pinned_crds.validate(custom, K8S / "crds") == []


def test_strict_validation_rejects_a_misspelt_field():
    deployment = validate.load_documents(K8S / "base" / "deployment.yaml")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    problems = validate.validate_documents([deployment])
    assert len(problems) == 2 and all("Deployment/deploykit" in p for p in problems)
    assert "1.29" in problems[0] and "readinessProbes" in problems[0]


@needs_kubectl
@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomize_builds_and_validates(folder):
    docs, custom = pinned_crds.custom(validate.kustomize_build(K8S / folder))
    assert docs or custom
    assert validate.validate_documents(docs) == [] and pinned_crds.validate(custom, K8S / "crds") == []


def _pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


@needs_kubectl
@pytest.mark.parametrize("folder", ["overlays/cpu", "overlays/gpu", "training"])
def test_pods_are_locked_down(folder):
    workload = [d for d in validate.kustomize_build(K8S / folder) if d["kind"] in ("Deployment", "Job")]
    for doc in workload:
        pod = _pod(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts  # somewhere writable on a read-only root
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) <= set(c["resources"]["limits"])


@needs_kubectl
def test_base_service_wiring():
    docs = by_kind(validate.kustomize_build(K8S / "overlays" / "cpu"))
    dep, svc, hpa, pdb, net = (docs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                                 "PodDisruptionBudget", "NetworkPolicy"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (svc["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"],
                     net["spec"]["podSelector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    container = _pod(dep)["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000} and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "startupProbe" in container and "preStop" in container["lifecycle"]
    # The pause before SIGTERM must fit in the grace period.
    assert int(container["lifecycle"]["preStop"]["exec"]["command"][1]) < \
        _pod(dep)["terminationGracePeriodSeconds"]
    # The NetworkPolicy admits the service port and nothing else.
    assert net["spec"]["policyTypes"] == ["Ingress"]
    assert [p["port"] for rule in net["spec"]["ingress"] for p in rule["ports"]] == ["http"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    env = {e["name"] for e in container["env"]}
    assert {"DEPLOYKIT_VARIANT", "DEPLOYKIT_MAX_BATCH_SIZE", "DEPLOYKIT_MAX_BATCH_TOKENS",
            "DEPLOYKIT_MAX_LATENCY_MS", "DEPLOYKIT_THREADS", "DEPLOYKIT_MAX_TEXTS",
            "DEPLOYKIT_PROVIDERS"} <= env
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "3000"
    assert _pod(dep)["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


@needs_kubectl
def test_rendered_cpu_overlay_takes_values_from_the_artifact(rendered):
    docs = validate.kustomize_build(rendered["cpu"])
    assert validate.validate_documents(docs) == []
    kinds = by_kind(docs)
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    dep, hpa = kinds["Deployment"], kinds["HorizontalPodAutoscaler"]
    container = _pod(dep)["containers"][0]
    assert container["image"] == "reg.example.com/team/deploykit:1.2"
    env = {e["name"]: e.get("value") for e in container["env"]}
    # variant = the manifest's default; token budget = the service's step (at least max_length)
    assert env["DEPLOYKIT_VARIANT"] == "int8"
    assert env["DEPLOYKIT_MAX_BATCH_SIZE"] == "64" and env["DEPLOYKIT_MAX_BATCH_TOKENS"] == "4096"
    assert env["DEPLOYKIT_PROVIDERS"] == "CPUExecutionProvider"
    assert dep["spec"]["template"]["metadata"]["annotations"]["deploykit.io/model"] == "sentiment"
    assert dep["spec"]["replicas"] == 3 and hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["maxReplicas"] == 15
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "1000m", "memory": "2Gi"}}


@needs_kubectl
def test_rendered_gpu_overlay_serves_opt_on_cuda(rendered):
    docs = validate.kustomize_build(rendered["gpu"])
    assert validate.validate_documents(docs) == []
    pod = _pod(by_kind(docs)["Deployment"])
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DEPLOYKIT_VARIANT"] == "opt"
    assert env["DEPLOYKIT_PROVIDERS"] == "CUDAExecutionProvider,CPUExecutionProvider"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "reg.example.com/team/deploykit@sha256:" + "a" * 64
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]


def test_render_refuses_bad_input_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = cli("k8s", "--image", "x:1", "--artifact", str(tmp_path / "missing"), "--out", str(out))
    assert proc.returncode == 2 and "is not a deploykit artifact" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    proc = cli("k8s", "--out", str(out))
    assert proc.returncode == 2 and "--image" in proc.stderr
    proc = cli("k8s", "--image", "x:1", "--cpu", "two", "--out", str(out))
    assert proc.returncode == 2 and "--cpu" in proc.stderr and not out.exists()


def test_gpu_render_needs_a_gpu_variant(tmp_path):
    artifact = write_manifest(tmp_path / "a", variants=("int8",))
    cfg = KubeConfig(image="x:1", out=str(tmp_path / "o"), artifact=str(artifact), gpu=True)
    with pytest.raises(Exception, match="no servable opt or fp32 variant for a GPU"):
        k8s.render(cfg)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("image,expected", [
    ("reg.io:5000/team/dk:1.2", {"newName": "reg.io:5000/team/dk", "newTag": "1.2"}),
    ("reg.io:5000/team/dk", {"newName": "reg.io:5000/team/dk"}),
    ("dk@sha256:ab", {"newName": "dk", "digest": "sha256:ab"}),
])
def test_split_image(image, expected):
    assert k8s.split_image(image) == expected


def test_rendered_overlay_is_self_contained(rendered):
    kustomization = yaml.safe_load((rendered["cpu"] / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["overlays/cpu"]
    assert (rendered["cpu"] / "base" / "deployment.yaml").is_file()
    for patch in kustomization["patches"]:
        assert (rendered["cpu"] / patch["path"]).is_file()


# --- the serving flags: --autoscale, --kind, Secrets (issue 28) ---------------------------------

CRDS = Path(__file__).resolve().parents[1] / "k8s" / "crds"


def custom_problems(doc: dict) -> list[str]:
    """A custom resource checked against its CRD, and its embedded Kubernetes parts strictly
    with kubernetes-validate (a Pod of the predictor's pod fields, an HPA of the behavior)."""
    problems = pinned_crds.validate([doc], CRDS)
    if doc["kind"] == "InferenceService":
        predictor = doc["spec"]["predictor"]
        keys = ("containers", "securityContext", "volumes", "tolerations", "nodeSelector",
                "terminationGracePeriodSeconds", "automountServiceAccountToken")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {k: predictor[k] for k in keys if k in predictor}}
        problems += validate.validate_documents([pod])
        behavior = predictor.get("autoScaling", {}).get("behavior")
    else:
        behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        hpa = autoscale.hpa("h", "Deployment", "d", 1, 2, [autoscale.cpu_metric()])
        hpa["spec"]["behavior"] = behavior
        problems += validate.validate_documents([hpa])
    return problems


@pytest.fixture(scope="module")
def serving_overlays(tmp_path_factory) -> dict[tuple, tuple[Path, list[dict]]]:
    """Every --kind x --autoscale (x --gpu), rendered and built: {(kind, autoscale, gpu): (folder, docs)}."""
    validate.kustomize_build  # noqa: B018 (kubectl is needed: the builds below)
    tmp = tmp_path_factory.mktemp("serving")
    artifact = write_manifest(tmp / "artifact")
    out = {}
    for kind in ("deployment", "kserve"):
        for mode in ("cpu", "queue", "keda"):
            for gpu in (False, True):
                folder = tmp / f"{kind}-{mode}-{'gpu' if gpu else 'cpu'}"
                k8s.render(KubeConfig(image="reg.example.com/team/deploykit:1.2", artifact=str(artifact),
                                      out=str(folder), kind=kind, autoscale=mode, gpu=gpu, namespace="ml",
                                      api_keys_secret="deploykit-keys", tls_secret="deploykit-tls",
                                      prometheus_url="http://prom.monitoring.svc:9090"))
                out[(kind, mode, gpu)] = folder, validate.kustomize_build(folder)
    return out


@needs_kubectl
def test_every_serving_overlay_validates_and_has_one_autoscaler(serving_overlays):
    for (kind, mode, gpu), (folder, docs) in serving_overlays.items():
        kinds = [d["kind"] for d in docs]
        core, custom = pinned_crds.custom(docs)
        assert validate.validate_documents(core) == [], (kind, mode)
        for doc in custom:
            assert custom_problems(doc) == [], (kind, mode, gpu)
        for doc in docs:  # a downward-API reference names a container of its own pod
            pod = (doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment"
                   else doc["spec"]["predictor"] if doc["kind"] == "InferenceService" else None)
            if pod is not None:
                names = {c["name"] for c in pod["containers"]}
                refs = [e["valueFrom"]["resourceFieldRef"].get("containerName") for c in pod["containers"]
                        for e in c.get("env", []) if "resourceFieldRef" in e.get("valueFrom", {})]
                assert refs and set(refs) <= names, (kind, mode, refs, names)
        autoscalers = kinds.count("HorizontalPodAutoscaler") + kinds.count("ScaledObject")
        if kind == "deployment":
            assert autoscalers == 1 and "Deployment" in kinds, (mode, kinds)
            assert ("ScaledObject" in kinds) == (mode == "keda")
        else:
            assert "Deployment" not in kinds and kinds.count("InferenceService") == 1
            isvc = by_kind(docs)["InferenceService"]
            cls = isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"]
            assert cls == {"cpu": "hpa", "keda": "keda", "queue": "external"}[mode]
            assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
            # KServe makes the autoscaler, except with `external`, where ours is the only one
            assert autoscalers == (1 if mode == "queue" else 0), kinds
        rules = folder.with_name(folder.name + "-adapter-rules.yaml")
        assert rules.exists() == (mode == "queue")  # beside the overlay, never in it
        assert not any("seriesQuery" in p.read_text() for p in folder.rglob("*.yaml"))


@needs_kubectl
def test_keda_scales_on_the_mean_queue_wait_as_a_value(serving_overlays):
    _, docs = serving_overlays[("deployment", "keda", False)]
    so = by_kind(docs)["ScaledObject"]
    prom, cpu = so["spec"]["triggers"]
    assert prom["type"] == "prometheus" and prom["metricType"] == "Value" and "metricName" not in prom["metadata"]
    assert prom["metadata"]["serverAddress"] == "http://prom.monitoring.svc:9090"
    assert float(prom["metadata"]["threshold"]) == 0.1 and float(prom["metadata"]["activationThreshold"]) > 0
    assert 'namespace="ml"' in prom["metadata"]["query"] and "deploykit_queue_wait_seconds_sum" in prom["metadata"]["query"]
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilizationWindowSeconds"] == 300
    assert so["spec"]["scaleTargetRef"]["name"] == by_kind(docs)["Deployment"]["metadata"]["name"]
    # On a GPU the CPU trigger goes: CPU is the wrong signal there
    _, gpu_docs = serving_overlays[("deployment", "keda", True)]
    assert [t["type"] for t in by_kind(gpu_docs)["ScaledObject"]["spec"]["triggers"]] == ["prometheus"]


@needs_kubectl
def test_queue_hpa_and_its_adapter_rule_agree(serving_overlays):
    folder, docs = serving_overlays[("deployment", "queue", False)]
    hpa = by_kind(docs)["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"] == [autoscale.queue_metric(100.0)]
    rules = yaml.safe_load(folder.with_name(folder.name + "-adapter-rules.yaml").read_text())["rules"]
    assert rules[0]["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]


def test_the_gpu_overlay_defaults_to_the_queue_wait():
    assert KubeConfig(image="x", gpu=True).autoscaler == "queue" and KubeConfig(image="x").autoscaler == "cpu"


@needs_kubectl
def test_secrets_are_references_and_tls_probes_say_https(serving_overlays):
    for (kind, mode, gpu), (folder, docs) in serving_overlays.items():
        if kind == "deployment":
            pod = _pod(by_kind(docs)["Deployment"])
            annotations = by_kind(docs)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        else:
            pod = by_kind(docs)["InferenceService"]["spec"]["predictor"]
            annotations = pod["annotations"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["DEPLOYKIT_API_KEYS_FILE"] == "/etc/deploykit/api-keys/api-keys" and "DEPLOYKIT_API_KEYS" not in env
        assert env["DEPLOYKIT_SSL_CERTFILE"].endswith("tls.crt") and env["DEPLOYKIT_SSL_KEYFILE"].endswith("tls.key")
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets == {"deploykit-keys", "deploykit-tls"}
        assert all(container[p]["httpGet"]["scheme"] == "HTTPS" for p in ("startupProbe", "readinessProbe",
                                                                        "livenessProbe"))
        assert annotations["prometheus.io/scheme"] == "https"


def test_custom_resource_validation_rejects_a_misspelt_field(serving_overlays):
    _, docs = serving_overlays[("kserve", "keda", False)]
    isvc = by_kind(docs)["InferenceService"]
    isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["serverAdress"] = "x"
    isvc["spec"]["predictor"]["containers"][0]["readinessProbes"] = {}
    problems = custom_problems(isvc)
    assert any("serverAdress" in p for p in problems) and any("readinessProbes" in p for p in problems)
    so = by_kind(serving_overlays[("deployment", "keda", False)][1])["ScaledObject"]
    assert pinned_crds.validate([so], CRDS) == []
    so["spec"]["triggers"][0]["metricName"] = "removed-from-keda"  # gone from current KEDA releases
    so["spec"]["maxReplicas"] = 3
    problems = pinned_crds.validate([so], CRDS)
    assert any("maxReplicas" in p for p in problems) and any("metricName" in p for p in problems)


def test_serving_flags_are_refused_with_train():
    proc = cli("k8s", "--train", "--image", "x:1", "--autoscale", "keda", "--out", "/tmp/never")
    assert proc.returncode == 2 and "--autoscale" in proc.stderr
