"""The Triton model repository: written files, every config.pbtxt parsed by Triton's own
protobuf schema and checked against the ONNX graph, the CLI's exit codes, and a real
``tritonserver`` (PyTriton's CPU build) serving the repository, queried with tritonclient.

The real-server tests use the virtual environment ``.ci/setup_pytriton.sh`` builds, which the
``pytriton_venv`` fixture builds on first use; if it cannot be built they fail under CI and skip
elsewhere (tests/outside_tools.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from deploykit.config import TritonConfig
from deploykit.manifest import Manifest
from deploykit.serve import triton_repo
from deploykit.serve.launch import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
NAME = "classifier"
MODELS = {NAME, f"{NAME}_onnx", f"{NAME}_tokenizer", f"{NAME}_postprocess", f"{NAME}_python"}
TEXTS = ["what a great day", "this is awful", "", "meh " * 80,
         "the table is brown and the city is big, we saw it on monday", "ok"]


def model_config(path: Path):
    """Parse a config.pbtxt with Triton's schema (unknown or misspelt fields raise)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def graph_io(model_file: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The ONNX graph's inputs and outputs as {name: Triton data type}, read with onnx itself."""
    import onnx

    names = {onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.INT32: "TYPE_INT32",
             onnx.TensorProto.FLOAT: "TYPE_FP32"}
    graph = onnx.load(str(model_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    ins = {i.name: names[i.type.tensor_type.elem_type] for i in graph.input if i.name not in initializers}
    outs = {o.name: names[o.type.tensor_type.elem_type] for o in graph.output}
    return ins, outs


def groups(config) -> list[tuple[int, str]]:
    from tritonclient.grpc import model_config_pb2

    return [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group]


def io_of(tensors) -> dict[str, tuple[str, list[int]]]:
    from tritonclient.grpc import model_config_pb2

    return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A tiny BERT through the real 'deploykit export': fp32, fused opt and int8 (the default)."""
    from export_fixtures import export_artifact, heldout_csv

    root = tmp_path_factory.mktemp("triton-artifact")
    return export_artifact(root, "bert", heldout_csv(root / "heldout.csv"))[1]


@pytest.fixture(scope="module")
def manifest(artifact) -> Manifest:
    return Manifest.read(artifact)


@pytest.fixture(scope="module")
def repo(artifact, tmp_path_factory) -> Path:
    """The repository the real server serves: the fused fp32 'opt' variant on CPU.

    Not the int8 default: dynamic INT8 derives activation scales from the whole batch, so its
    scores depend on padding and batch-mates and could not be compared tightly with the
    runtime's; the int8 repository's files are checked in test_cpu_kind_ships_the_default_variant.
    """
    out = tmp_path_factory.mktemp("triton") / "repo"
    return triton_repo.run(TritonConfig(artifact=str(artifact), out=str(out), variant="opt",
                                        max_batch_size=8, max_queue_delay_us=500, instances=2,
                                        threads=1))


# --- the written repository -------------------------------------------------------------------

def test_repository_holds_exactly_the_five_models_and_a_readme(repo):
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == sorted([
        "README.md",
        f"{NAME}/config.pbtxt",
        f"{NAME}_onnx/config.pbtxt", f"{NAME}_onnx/1/model.onnx",
        f"{NAME}_tokenizer/config.pbtxt", f"{NAME}_tokenizer/1/model.py",
        f"{NAME}_tokenizer/1/tokenizer.json",
        f"{NAME}_postprocess/config.pbtxt", f"{NAME}_postprocess/1/model.py",
        f"{NAME}_python/config.pbtxt", f"{NAME}_python/1/model.py",
        # The artifact copy holds the shipped variant only.
        f"{NAME}_python/1/artifact/manifest.json", f"{NAME}_python/1/artifact/model.opt.onnx",
        f"{NAME}_python/1/artifact/tokenizer.json", f"{NAME}_python/1/artifact/config.json",
    ])


def test_onnx_config_matches_the_graph_and_the_options(repo, artifact, manifest):
    config = model_config(repo / f"{NAME}_onnx" / "config.pbtxt")
    model_file = repo / f"{NAME}_onnx" / "1" / "model.onnx"
    # The shipped file is the variant asked for, byte for byte.
    assert model_file.read_bytes() == (artifact / "model.opt.onnx").read_bytes()

    graph_in, graph_out = graph_io(model_file)
    assert config.name == f"{NAME}_onnx" and config.platform == "onnxruntime_onnx"
    assert io_of(config.input) == {n: (t, [-1]) for n, t in graph_in.items()}
    assert io_of(config.output) == {n: (t, [len(manifest.head.labels)]) for n, t in graph_out.items()}
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert groups(config) == [(2, "KIND_CPU")]
    # The ONNX Runtime backend numbers levels its own way: 1 = basic + extended.
    assert config.optimization.graph.level == 1
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"intra_op_thread_count": "1", "inter_op_thread_count": "1"}


def test_ensemble_wires_tokenizer_onnx_and_postprocess_consistently(repo, manifest):
    configs = {m: model_config(repo / m / "config.pbtxt") for m in MODELS}
    onnx_cfg, tok, post = (configs[f"{NAME}_{s}"] for s in ("onnx", "tokenizer", "postprocess"))
    labels = list(manifest.head.labels)
    text_io = {"TEXT": ("TYPE_STRING", [1])}
    result_io = {"LABEL": ("TYPE_STRING", [1]), "SCORES": ("TYPE_FP32", [len(labels)])}

    # Each stage's outputs are exactly the next stage's inputs, types and dims included.
    assert io_of(tok.input) == text_io
    assert io_of(tok.output) == io_of(onnx_cfg.input)
    assert io_of(post.input) == io_of(onnx_cfg.output)
    assert io_of(post.output) == result_io
    for python_model in (tok, post, configs[f"{NAME}_python"]):
        assert python_model.backend == "python"
    assert io_of(configs[f"{NAME}_python"].input) == text_io
    assert io_of(configs[f"{NAME}_python"].output) == result_io

    ensemble = configs[NAME]
    assert ensemble.platform == "ensemble"
    assert io_of(ensemble.input) == text_io and io_of(ensemble.output) == result_io
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [f"{NAME}_tokenizer", f"{NAME}_onnx", f"{NAME}_postprocess"]
    # Every tensor a step reads is an ensemble input or written by an earlier step.
    available = {"TEXT"}
    for step, model in zip(steps, (tok, onnx_cfg, post)):
        assert set(step.input_map) == {t.name for t in model.input}
        assert set(step.input_map.values()) <= available
        assert set(step.output_map) == {t.name for t in model.output}
        available |= set(step.output_map.values())
    assert {"LABEL", "SCORES"} <= available

    assert json.loads(post.parameters["labels"].string_value) == labels
    assert tok.parameters["max_length"].string_value == str(manifest.max_length)


def test_python_model_ships_a_verifiable_single_variant_artifact(repo):
    copy = Manifest.verify(repo / f"{NAME}_python" / "1" / "artifact")
    assert list(copy.variants) == ["opt"] and copy.default_variant == "opt"
    assert sorted(copy.files) == ["config.json", "model.opt.onnx", "tokenizer.json"]
    config = model_config(repo / f"{NAME}_python" / "config.pbtxt")
    assert config.parameters["variant"].string_value == "opt"
    assert config.parameters["providers"].string_value == "CPUExecutionProvider"


def test_cpu_kind_ships_the_default_variant(artifact, manifest, tmp_path):
    out = triton_repo.run(TritonConfig(artifact=str(artifact), out=str(tmp_path / "cpu")))
    assert manifest.default_variant == "int8"
    assert (out / f"{NAME}_onnx/1/model.onnx").read_bytes() == (artifact / "model.int8.onnx").read_bytes()
    graph_in, _ = graph_io(out / f"{NAME}_onnx/1/model.onnx")
    assert io_of(model_config(out / f"{NAME}_onnx/config.pbtxt").input) == {n: (t, [-1]) for n, t in graph_in.items()}
    assert sorted(p.name for p in (out / f"{NAME}_python/1/artifact").iterdir()) == [
        "config.json", "manifest.json", "model.int8.onnx", "tokenizer.json"]


def test_gpu_kind_ships_the_fused_fp32_variant_on_gpu_instances(artifact, tmp_path):
    out = triton_repo.run(TritonConfig(artifact=str(artifact), out=str(tmp_path / "gpu"),
                                       kind="gpu", name="sentiment", graph_level="all"))
    config = model_config(out / "sentiment_onnx" / "config.pbtxt")
    assert groups(config) == [(1, "KIND_GPU")]
    # 'all' is the backend's default: no level is written (0 would not be a documented value).
    assert not config.HasField("optimization")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "sentiment", "sentiment_onnx", "sentiment_postprocess", "sentiment_python",
         "sentiment_tokenizer"])
    # The fused fp32 variant, never the CPU-only int8 default.
    assert (out / "sentiment_onnx/1/model.onnx").read_bytes() == (artifact / "model.opt.onnx").read_bytes()
    python_cfg = model_config(out / "sentiment_python" / "config.pbtxt")
    assert python_cfg.parameters["providers"].string_value.startswith("CUDAExecutionProvider")
    assert "onnxruntime-gpu" in (out / "README.md").read_text()
    # The tokenizer and postprocess models stay on CPU instances.
    assert groups(model_config(out / "sentiment_tokenizer" / "config.pbtxt")) == [(1, "KIND_CPU")]


def test_choose_variant_rules(tmp_path):
    """--kind maps to the device of the one variant rule (tests/test_manifest.py has the rest)."""
    from factories import hand_made_artifact

    from deploykit.errors import BadInputError

    manifest = Manifest.read(hand_made_artifact(tmp_path / "a"))
    assert triton_repo.choose_variant(manifest, "cpu") == "int8"
    assert triton_repo.choose_variant(manifest, "gpu") == "opt"
    assert triton_repo.choose_variant(manifest, "cpu", "fp32") == "fp32"
    with pytest.raises(BadInputError, match="CPU format.*\\(--variant, or --kind\\)"):
        triton_repo.choose_variant(manifest, "gpu", "int8")


def test_templates_ship_in_the_package_and_the_writer_is_torch_free():
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folder = ROOT / "deploykit" / "tasks" / "classification"
    shipped = {p for pattern in package_data["deploykit.tasks.classification"] for p in folder.glob(pattern)}
    templates = {p for p in (folder / "triton_templates").iterdir() if p.is_file()}
    assert templates and templates <= shipped
    code = ("import sys, deploykit.serve.triton_repo, deploykit.tasks.classification.triton, deploykit.cli; "
            "print([m for m in ('torch', 'transformers', 'datasets') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_name_renames_the_models_and_a_bad_manifest_name_is_refused(artifact, tmp_path):
    """--name renames the repository's models; a manifest recording a name export would refuse
    is refused as a whole (tests/test_manifest.py checks the rule across every stage)."""
    from deploykit.errors import BadInputError

    out = triton_repo.run(TritonConfig(artifact=str(artifact), out=str(tmp_path / "b"), name="mine"))
    assert (out / "mine_python" / "config.pbtxt").is_file() and (out / "mine" / "config.pbtxt").is_file()
    renamed = Path(shutil.copytree(artifact, tmp_path / "renamed"))
    doc = json.loads((renamed / "manifest.json").read_text())
    (renamed / "manifest.json").write_text(json.dumps(dict(doc, name="my model")))
    with pytest.raises(BadInputError, match="'name' 'my model' is not a model name"):
        triton_repo.run(TritonConfig(artifact=str(renamed), out=str(tmp_path / "a"), name="mine"))
    assert not (tmp_path / "a").exists()


# --- the command line ----------------------------------------------------------------------

def deploykit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploykit", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_cli_writes_refuses_to_clobber_and_rejects_a_tampered_artifact(artifact, tmp_path):
    out = tmp_path / "repo"
    done = deploykit("triton", str(artifact), "--out", str(out), "--name", "tweets")
    assert done.returncode == 0, done.stderr
    assert (out / "tweets" / "config.pbtxt").is_file()

    again = deploykit("triton", str(artifact), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (out / "tweets").is_dir()  # untouched

    bad_name = deploykit("triton", str(artifact), "--out", str(tmp_path / "x"), "--name", "a/b")
    assert bad_name.returncode == 2 and "--name" in bad_name.stderr

    itself = deploykit("triton", str(artifact), "--out", str(artifact), "--overwrite")
    assert itself.returncode == 2 and "artifact folder itself" in itself.stderr
    assert (artifact / "manifest.json").is_file()

    tampered = tmp_path / "tampered"
    shutil.copytree(artifact, tampered)
    with open(tampered / "tokenizer.json", "a") as fh:
        fh.write(" ")
    failed = deploykit("triton", str(tampered), "--out", str(tmp_path / "never"))
    assert failed.returncode == 4 and "tokenizer.json" in failed.stderr
    assert not (tmp_path / "never").exists()
    assert not list(tmp_path.glob(".never.tmp-*"))


# --- a real tritonserver ---------------------------------------------------------------------

def _venv_paths(venv: Path) -> tuple[Path, Path, str]:
    """(tritonserver dir, nvidia_pytriton.libs, the venv interpreter's lib dir)."""
    site = next(venv.glob("lib/python3*/site-packages"))
    libdir = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return site / "pytriton" / "tritonserver", site / "nvidia_pytriton.libs", libdir


def readme_command(readme: str, model: str) -> list[str]:
    """The README's tritonserver command line that loads ``model``."""
    for line in readme.splitlines():
        if line.startswith("tritonserver ") and line.endswith(f"--load-model={model}"):
            return shlex.split(line)
    raise AssertionError(f"README has no tritonserver command that loads {model}")


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory, pytriton_venv):
    """tritonserver on a copy of the repository, started with the README's command lines.

    It loads ``NAME_python`` and the ensemble ``NAME``; the ensemble's ONNX step runs through
    tests/triton_onnx_standin.py because PyTriton's build has no ONNX Runtime backend.
    """
    served = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(repo, served)
    onnx_config = served / f"{NAME}_onnx" / "config.pbtxt"
    onnx_config.write_text(onnx_config.read_text().replace('platform: "onnxruntime_onnx"',
                                                           'backend: "python"'))
    shutil.copy(ROOT / "tests" / "triton_onnx_standin.py", served / f"{NAME}_onnx" / "1" / "model.py")

    readme = (repo / "README.md").read_text()
    python_cmd = readme_command(readme, f"{NAME}_python")
    ensemble_cmd = readme_command(readme, NAME)
    assert python_cmd[:3] == ensemble_cmd[:3] == ["tritonserver", '--model-repository=$PWD',
                                                  "--model-control-mode=explicit"]
    proc, url = launch(pytriton_venv, served, [*python_cmd[2:], ensemble_cmd[-1]], (NAME, f"{NAME}_python"),
                       served.parent / "tritonserver.log")
    try:
        yield {"url": url, "readme": readme, "log": served.parent / "tritonserver.log"}
    finally:
        # Stop exactly the server this fixture started (its own process group).
        stop_process_group(proc, timeout=60)


@contextlib.contextmanager
def readme_server(venv: Path, repo: Path, model: str) -> Iterator[Any]:
    """tritonserver on ``repo`` started with its README's command line for ``model`` (on free loopback
    ports); yields a tritonclient HTTP client and stops the server by its process group after."""
    import tritonclient.http as httpclient

    command = readme_command((repo / "README.md").read_text(), model)
    proc, url = launch(venv, repo, command[2:], (model,), repo.parent / "tritonserver.log")
    client = httpclient.InferenceServerClient(url)
    try:
        yield client
    finally:
        client.close()
        stop_process_group(proc, timeout=60)


def launch(venv: Path, repo: Path, flags: list[str], models: tuple[str, ...], log_path: Path) -> tuple[subprocess.Popen, str]:
    """The venv's ``tritonserver`` on ``repo`` with ``flags`` (the README's), on free loopback ports:
    (process, host:port of its HTTP endpoint) once every model of ``models`` is ready."""
    import tritonclient.http as httpclient

    server_dir, libs, libdir = _venv_paths(venv)
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    command = [str(server_dir / "bin" / "tritonserver"), f"--model-repository={repo}", *flags,
               f"--backend-directory={server_dir / 'backends'}",
               f"--backend-config=python,shm-region-prefix-name=dk{os.getpid()}x{free_port()}",
               *(f"--{k}-address=127.0.0.1" for k in ports),
               *(f"--{k}-port={v}" for k, v in ports.items())]
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
               LD_LIBRARY_PATH=":".join(filter(None, [libdir, str(libs), os.environ.get("LD_LIBRARY_PATH")])))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, env=env, cwd=repo, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"127.0.0.1:{ports['http']}"
    client = httpclient.InferenceServerClient(url)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if all(client.is_model_ready(m) for m in models):
                    return proc, url
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                stop_process_group(proc, timeout=60)
                pytest.fail(f"tritonserver not ready in 180 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
    finally:
        client.close()


@pytest.fixture(scope="module")
def expected(artifact):
    from deploykit.runtime import Runtime

    runtime = Runtime(artifact, "opt")
    results = runtime.predict(TEXTS)
    return ([r["label"] for r in results],
            np.array([[r["scores"][label] for label in runtime.labels] for r in results]))


# Measured: the server's scores differ from the runtime's by 1.5e-8 at most (float32 rounding;
# the ensemble pads to max_length, the runtime to each batch's longest row). A tiny random
# model gives every text nearly the same scores (about 1e-5 apart) and the same label, so the
# tolerance must sit well below the gap between texts for the check to prove each row is its
# own text's.
SCORE_ATOL = 1e-7


def assert_scores_match(got: np.ndarray, want: np.ndarray) -> None:
    gaps = [np.abs(want[i] - want[j]).max() for i in range(len(want)) for j in range(i)]
    assert min(gaps, default=1.0) > 10 * SCORE_ATOL, "texts too alike to tell rows apart"
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=SCORE_ATOL)


def _infer(url: str, model: str, texts: list[str], binary: bool):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        batch = np.array([[t] for t in texts], dtype=np.object_)
        text = httpclient.InferInput("TEXT", list(batch.shape), "BYTES")
        text.set_data_from_numpy(batch, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("LABEL", "SCORES")]
        result = client.infer(model, [text], outputs=outputs)
        labels = result.as_numpy("LABEL")
        assert labels.shape == (len(texts), 1)
        decoded = [v.decode() if isinstance(v, bytes) else str(v) for v in labels.reshape(-1)]
        return decoded, result.as_numpy("SCORES")
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("model", [f"{NAME}_python", NAME])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_real_tritonserver_agrees_with_the_runtime(server, expected, model, binary):
    labels, scores = _infer(server["url"], model, TEXTS, binary)
    want_labels, want_scores = expected
    assert labels == want_labels
    # The ensemble pads to max_length and the runtime to each batch's longest row: the masked
    # positions change float rounding only.
    assert_scores_match(scores, want_scores)


@pytest.mark.slow
def test_readme_client_snippet_runs_against_the_server(server, expected):
    snippet = re.search(r"```python\n(.*?)```", server["readme"], re.S).group(1)
    assert 'URL = "127.0.0.1:8000"' in snippet
    namespace: dict = {}
    exec(snippet.replace('URL = "127.0.0.1:8000"', f'URL = "{server["url"]}"')
         .replace("print(labels, scores)", ""), namespace)  # noqa: S102 - our own README
    # The snippet classifies TEXTS[0] and TEXTS[1] with the ensemble.
    assert namespace["labels"] == expected[0][:2]
    assert_scores_match(namespace["scores"], expected[1][:2])


@pytest.mark.slow
def test_readme_curl_command_runs_against_the_server(server, expected):
    block = re.search(r"```bash\n(curl .*?)```", server["readme"], re.S).group(1)
    port = server["url"].rsplit(":", 1)[1]
    done = subprocess.run(["bash", "-c", block.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
                          capture_output=True, text=True, timeout=60, check=True)
    outputs = {o["name"]: o for o in json.loads(done.stdout)["outputs"]}
    assert outputs["LABEL"]["data"] == expected[0][:1] and outputs["LABEL"]["shape"] == [1, 1]
    assert_scores_match(np.array([outputs["SCORES"]["data"]], dtype=np.float32), expected[1][:1])


@pytest.mark.slow
@pytest.mark.parametrize("model", [f"{NAME}_python", NAME])
def test_concurrent_requests_of_different_lengths_are_batched_correctly(server, expected, model):
    """Requests of different text lengths, sent at once, each get their own rows back."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _infer(server["url"], model, [TEXTS[i]], True),
                                range(len(TEXTS))))
    assert [r[0][0] for r in results] == expected[0]
    assert_scores_match(np.vstack([r[1] for r in results]), expected[1])


@pytest.mark.slow
@pytest.mark.parametrize("model", [f"{NAME}_python", NAME])
def test_text_that_is_not_utf8_gets_a_clear_error_and_the_server_keeps_serving(server, expected, model):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server["url"])
    try:
        batch = np.array([[b"\xff\xfe not utf-8"]], dtype=np.object_)
        text = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        text.set_data_from_numpy(batch)
        with pytest.raises(InferenceServerException, match="UTF-8"):
            client.infer(model, [text])
    finally:
        client.close()
    labels, _ = _infer(server["url"], model, TEXTS[:1], True)
    assert labels == expected[0][:1]
