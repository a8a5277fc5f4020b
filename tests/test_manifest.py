"""The artifact contract: one reader, one variant rule, one model-name rule, on hand-made manifests.

Every rule is checked through the functions the commands themselves use (serve's launch
command, build's variant choice, containerize's GPU image settings, k8s's values, triton's
variant), so the commands cannot drift apart again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from factories import hand_made_artifact

from deploykit.errors import BadInputError, IntegrityError
from deploykit.manifest import Manifest, name_problem

ROOT = Path(__file__).resolve().parents[1]
V1 = Path(__file__).parent / "data" / "manifest-v1.json"  # written by the deploykit of schema 1


# --- what each command would serve -----------------------------------------------------------

def _serve(folder: Path, device: str, monkeypatch) -> str:
    from deploykit.config import ServeConfig
    from deploykit.serve import launch

    # The machine's onnxruntime build is CPU-only; what matters here is the variant chosen.
    monkeypatch.setattr(launch, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers = "CUDAExecutionProvider,CPUExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    _, env = launch.command(ServeConfig(artifact=str(folder), providers=providers))
    return env["DEPLOYKIT_VARIANT"]


def _build(folder: Path, device: str, monkeypatch) -> str:
    from deploykit.serve import build

    (packed,) = build._choose_variants(Manifest.verify(folder), None, device)
    return packed


def _containerize(folder: Path, device: str, monkeypatch) -> str:
    """The bento build packs for the device, then the image settings containerize writes."""
    from deploykit.deploy import containerize
    from deploykit.serve import build

    bento = folder.parent / f"bento-{device}"
    manifest = Manifest.verify(folder)
    build.write_artifact(folder, bento / "src" / "artifact", manifest, build._choose_variants(manifest, None, device))
    info = containerize.retarget({"image": {"commands": []}, "envs": []}, bento, base_image="python:3.11-slim",
                                 gpu=device == "cuda")
    env = {e["name"]: e["value"] for e in info["envs"]}
    # The CPU image serves the bento's default variant (no DEPLOYKIT_VARIANT set).
    return env.get("DEPLOYKIT_VARIANT") or containerize.packed_manifest(bento).pick().name


def _k8s(folder: Path, device: str, monkeypatch) -> str:
    from deploykit.deploy import k8s

    return k8s.serving_values(Manifest.read(folder), device == "cuda")["DEPLOYKIT_VARIANT"]


def _triton(folder: Path, device: str, monkeypatch) -> str:
    from deploykit.serve import triton_repo

    return triton_repo.choose_variant(Manifest.verify(folder), "gpu" if device == "cuda" else "cpu")


COMMANDS = {"serve": _serve, "build": _build, "containerize": _containerize, "k8s": _k8s, "triton": _triton}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("servable,device,expected", [
    ({"int8": True, "opt": True, "fp32": True}, "cpu", "int8"),    # the default variant
    ({"int8": True, "opt": True, "fp32": True}, "cuda", "opt"),    # fused fp32 on a GPU
    ({"int8": True, "opt": False, "fp32": True}, "cuda", "fp32"),  # opt missed parity: fp32, everywhere
    ({"int8": False, "opt": True, "fp32": True}, "cpu", "opt"),    # int8 missed parity at export
])
def test_every_command_picks_the_same_variant(command, servable, device, expected, tmp_path, monkeypatch):
    default = next(n for n in ("int8", "opt", "fp32") if servable[n])  # export's rule
    folder = hand_made_artifact(tmp_path / "artifact", servable, default=default)
    assert COMMANDS[command](folder, device, monkeypatch) == expected


@pytest.mark.parametrize("command", COMMANDS)
def test_no_gpu_variant_is_refused_alike(command, tmp_path, monkeypatch):
    folder = hand_made_artifact(tmp_path / "artifact", {"int8": True})
    with pytest.raises(BadInputError, match="no servable opt or fp32 variant for a GPU"):
        COMMANDS[command](folder, "cuda", monkeypatch)


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_servable_is_an_error_naming_the_field(command, tmp_path, monkeypatch):
    """No command guesses whether a variant passed its parity gate."""
    folder = hand_made_artifact(tmp_path / "artifact", {"int8": True, "opt": None, "fp32": True})
    for device in ("cpu", "cuda"):
        with pytest.raises(BadInputError, match=r"'variants\.opt\.servable' is missing") as info:
            COMMANDS[command](folder, device, monkeypatch)
        assert info.value.exit_code == 2


def test_the_rule_itself(tmp_path):
    manifest = Manifest.verify(hand_made_artifact(tmp_path / "a", {"int8": True, "opt": True, "fp32": True}))
    assert manifest.pick().name == "int8" and manifest.pick(device="cuda").name == "opt"
    assert manifest.pick("fp32").name == "fp32" and manifest.pick("fp32", "cuda").name == "fp32"
    with pytest.raises(BadInputError, match="INT8, a CPU format"):
        manifest.pick("int8", "cuda")
    with pytest.raises(BadInputError, match="'fp16' is not in .* choose one of int8, opt, fp32 \\(--variant"):
        manifest.pick("fp16")
    with pytest.raises(BadInputError, match="unknown device"):
        manifest.pick(device="tpu")
    failed = Manifest.verify(hand_made_artifact(tmp_path / "b", {"int8": False, "opt": True}, default="int8"))
    with pytest.raises(BadInputError, match="'int8' is marked not servable \\(label_agreement 0.5 vs "
                                            "limit 0.99\\); serve one of opt"):
        failed.pick()


def test_the_default_is_batch_independent(tmp_path):
    """A servable INT8 whose logits move with batch mates is not the default (export's rule, and
    for_copy's when the default is dropped); by name it is still served. Not measured (an artifact
    written before the measurement) counts as independent."""
    from deploykit.manifest import BATCH_INDEPENDENCE_ATOL, default_name

    manifest = Manifest.verify(hand_made_artifact(tmp_path / "a", {"int8": True, "opt": True, "fp32": True}))

    def measured(variant, dependence):
        return replace(variant, parity={**variant.parity, "batch_independence": {"max_abs_diff": dependence}})

    dependent = {**manifest.variants, "int8": measured(manifest.variants["int8"], 0.2)}
    assert not dependent["int8"].batch_independent and dependent["int8"].batch_dependence == 0.2
    assert default_name(dependent) == "opt" and default_name(dependent, "int8") == "int8"
    at_bound = {**manifest.variants, "int8": measured(manifest.variants["int8"], BATCH_INDEPENDENCE_ATOL)}
    assert default_name(at_bound) == "int8"
    assert default_name(manifest.variants) == "int8" and manifest.variants["int8"].batch_dependence is None
    # Nothing batch-independent is servable: the first servable one, still.
    alone = {"int8": dependent["int8"], "opt": replace(manifest.variants["opt"], servable=False)}
    assert default_name(alone) == "int8"
    judged = replace(manifest, variants=dependent).judged(
        {n: (v.parity, v.metrics, v.servable) for n, v in dependent.items()})
    assert judged.default_variant == "opt" and judged.pick("int8").name == "int8"
    assert replace(manifest, variants=dependent).for_copy(["int8", "fp32"]).default_variant == "int8"
    assert replace(manifest, variants=dependent, default_variant="opt").for_copy(["int8", "fp32"]).default_variant == "fp32"


def test_unknown_schema_version_is_refused_with_exit_2(tmp_path):
    folder = hand_made_artifact(tmp_path / "artifact", schema_version=3)
    with pytest.raises(BadInputError, match="schema_version 3; this deploykit reads 1 and 2") as info:
        Manifest.read(folder)
    assert info.value.exit_code == 2
    proc = subprocess.run([sys.executable, "-m", "deploykit", "k8s", "--image", "reg/x:1", "--artifact",
                           str(folder), "--out", str(tmp_path / "k8s"), "--no-validate"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "schema_version 3" in proc.stderr
    assert not (tmp_path / "k8s").exists()


@pytest.mark.parametrize("field,value,message", [
    ("task", "text-to-speech", "'task' is 'text-to-speech'; this deploykit knows text-classification"),
    ("task", None, "'task' is missing"),
    ("labels", [], "'labels' must be a non-empty list"),
    ("labels", ["a", "a", "b"], "'labels' has duplicates"),
    ("max_length", "128", "'max_length' must be int"),
    ("max_length", 0, "'max_length' is 0"),
    ("inputs", ["pixel_values"], "'inputs' is \\['pixel_values'\\]"),
    ("default_variant", "fp16", "'default_variant' is 'fp16', which is not among the variants"),
    ("name", "-x", "'name' '-x' is not a model name"),
    ("variants", {}, "'variants' lists no model variants"),
])
def test_every_field_is_checked_by_name(field, value, message, tmp_path):
    folder = hand_made_artifact(tmp_path / "artifact", **{field: value})
    with pytest.raises(BadInputError, match=message):
        Manifest.read(folder)


def test_labels_are_cross_checked_with_config_json(tmp_path):
    folder = hand_made_artifact(tmp_path / "artifact")
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "negative", "1": "positive",
                                                                 "2": "neutral"}}))
    manifest = Manifest.read(folder)
    replace(manifest, files={**manifest.files, **{k: v for k, v in _hashes(folder).items()
                                                  if k == "config.json"}}).write(folder)
    with pytest.raises(BadInputError, match="differ from config.json's id2label"):
        Manifest.verify(folder)


def _hashes(folder: Path):
    from deploykit.manifest import hash_files

    return hash_files(folder)


def test_the_manifest_of_schema_1_reads_and_writes_back_unchanged(tmp_path):
    """A manifest.json exported by the deploykit of schema_version 1, before rows were hashed."""
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(V1, folder / "manifest.json")
    manifest = Manifest.read(folder)
    assert (manifest.schema_version, manifest.name, manifest.task) == (1, "sentiment", "text-classification")
    assert manifest.head.labels == ("negative", "neutral", "positive") and manifest.max_length == 32
    assert list(manifest.variants) == ["fp32", "opt", "int8"] and manifest.pick().name == "int8"
    assert manifest.variants["int8"].quantization["mode"] == "dynamic"
    assert manifest.evaluation.n == 32 and manifest.evaluation.sha256 is None  # not recorded then
    assert manifest.to_json() == json.loads(V1.read_text())  # nothing lost on a copy


def test_for_copy_keeps_only_the_packed_variants_and_their_files(tmp_path):
    folder = hand_made_artifact(tmp_path / "artifact")
    (folder / "model.opt.onnx.data").write_bytes(b"external weights")
    manifest = Manifest.read(folder)
    replace(manifest, files=_hashes(folder)).write(folder)
    manifest = Manifest.verify(folder)
    copy = manifest.for_copy(["opt"])
    assert list(copy.variants) == ["opt"] and copy.default_variant == "opt"
    assert set(copy.files) == {"model.opt.onnx", "model.opt.onnx.data", "tokenizer.json", "config.json"}
    assert manifest.files_of("opt") == ["model.opt.onnx", "model.opt.onnx.data"]
    assert manifest.for_copy(["fp32", "int8"]).default_variant == "int8"
    with pytest.raises(BadInputError, match="cannot pack variant\\(s\\) fp16"):
        manifest.for_copy(["fp16"])


def test_verify_checks_every_listed_file(tmp_path):
    folder = hand_made_artifact(tmp_path / "artifact")
    (folder / "model.opt.onnx").write_bytes(b"stand-in for model.opt.onnX")  # same size, other bytes
    with pytest.raises(IntegrityError, match="model.opt.onnx does not match its sha256") as info:
        Manifest.verify(folder)
    assert info.value.exit_code == 4


# --- one model-name rule -----------------------------------------------------------------------

ACCEPTED = ["sentiment", "Tweets-v2.1", "a", "7", "m_n", "a.b-c_d", "x" * 53]
REFUSED = ["-x", ".m", "modèle", "x.", "x-", "_x", "a b", "a/b", "", "x" * 54, "a:b"]


@pytest.mark.parametrize("name", ACCEPTED + REFUSED)
def test_export_accepts_exactly_the_names_every_stage_accepts(name, serve_artifact, tmp_path, monkeypatch):
    """A name export accepts is served, packed, written to Triton and deployed; a name any of
    them would refuse is refused by export, and by every stage when a manifest records it."""
    from deploykit.config import BuildConfig, ExportConfig, KubeConfig, ServeConfig, TritonConfig
    from deploykit.deploy import k8s
    from deploykit.errors import ConfigError
    from deploykit.serve import build, launch, triton_repo

    accepted = name in ACCEPTED
    assert (name_problem(name) is None) == accepted
    if accepted:
        ExportConfig(checkpoint="ck", name=name)
        TritonConfig(artifact="a", name=name)
    else:
        with pytest.raises(ConfigError, match="invalid --name"):
            ExportConfig(checkpoint="ck", name=name)
    folder = Path(shutil.copytree(serve_artifact, tmp_path / "artifact"))
    doc = json.loads((folder / "manifest.json").read_text())
    doc["name"] = name  # as if export had written it (the manifest is not among the hashed files)
    (folder / "manifest.json").write_text(json.dumps(doc))
    stages = {
        "serve": lambda: launch.command(ServeConfig(artifact=str(folder))),
        "build": lambda: build.bento_tag(BuildConfig(artifact=str(folder)), Manifest.verify(folder)),
        "triton": lambda: triton_repo.run(TritonConfig(artifact=str(folder), out=str(tmp_path / "triton"))),
        "k8s": lambda: k8s.render(KubeConfig(image="reg/deploykit:1", artifact=str(folder),
                                             out=str(tmp_path / "k8s"), validate=False)),
    }
    for stage, run in stages.items():
        if accepted:
            run()
        else:
            with pytest.raises(BadInputError, match="'name'"):
                run()
    if accepted:
        assert (tmp_path / "triton" / name / "config.pbtxt").is_file()
        assert f"deploykit.io/model: {name}" in (tmp_path / "k8s" / "patches" / "deployment.yaml").read_text() \
            or f"deploykit.io/model: '{name}'" in (tmp_path / "k8s" / "patches" / "deployment.yaml").read_text()
