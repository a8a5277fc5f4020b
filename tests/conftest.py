import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray the tests start (in this process or below it) runs without usage stats and with token
# authentication on a token of the session's own: Ray reads these when it is first imported, and a
# new local Ray would otherwise write ~/.ray/auth_token, which every later Ray on the machine uses.
if "RAY_AUTH_TOKEN_PATH" not in os.environ:
    import atexit
    import secrets
    import shutil
    import tempfile

    _ray_auth = tempfile.mkdtemp(prefix="deploykit-ray-auth-")
    atexit.register(shutil.rmtree, _ray_auth, ignore_errors=True)
    Path(_ray_auth, "auth_token").write_text(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(Path(_ray_auth, "auth_token")),
                      RAY_USAGE_STATS_ENABLED="0")
sys.path.insert(0, str(Path(__file__).parent))
# A third task, registered from outside the package (tests/lengthtask), before anything builds the
# stage configs (which gain its options): the contract test (test_task_contract.py) runs it through
# every stage, and hands DEPLOYKIT_TASKS=lengthtask to the processes it starts.
import lengthtask  # noqa: E402,F401
from quiet import QuietLock  # noqa: E402

_QUIET: QuietLock | None = None  # set on each xdist worker (tests/quiet.py)
_QUIET_FOLDER: str | None = None  # the controller's one lock folder for all its workers


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist's controller: hand every worker the same lock folder (removed when the session exits)."""
    global _QUIET_FOLDER
    if _QUIET_FOLDER is None:
        import atexit
        import shutil
        import tempfile

        _QUIET_FOLDER = tempfile.mkdtemp(prefix="deploykit-quiet-")
        atexit.register(shutil.rmtree, _QUIET_FOLDER, ignore_errors=True)
    node.workerinput["deploykit_quiet"] = _QUIET_FOLDER


def pytest_configure(config):
    global _QUIET
    folder = getattr(config, "workerinput", {}).get("deploykit_quiet")
    if folder:
        _QUIET = QuietLock(Path(folder))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist, a ``quiet`` test runs alone and every other test beside at most one other."""
    if _QUIET is None:
        yield
        return
    with _QUIET.alone() if item.get_closest_marker("quiet") else _QUIET.shared():
        yield


@pytest.fixture(scope="session", autouse=True)
def no_ray_token_in_home():
    """Every Ray the tests start uses the session's token (above): none may create ~/.ray/auth_token,
    which every later Ray on the machine would use."""
    token = Path.home() / ".ray" / "auth_token"
    before = token.exists()
    yield
    assert before or not token.exists(), (f"a test started a Ray without the session's RAY_AUTH_TOKEN_PATH and it "
                                          f"created {token}; keep RAY_AUTH_* in the environment of every Ray")


@pytest.fixture(scope="session")
def tokenizer():
    from factories import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory):
    """A tiny random BERT saved as a 'pretrained model' folder to fine-tune."""
    from factories import save_pretrained_model

    return save_pretrained_model(tmp_path_factory.mktemp("pretrained") / "bert")


@pytest.fixture(scope="session")
def learnable_csv(tmp_path_factory):
    """300 rows whose label is spelled out by a keyword: a tiny model learns it in seconds."""
    from factories import learnable_rows, write_csv

    return write_csv(tmp_path_factory.mktemp("data") / "learnable.csv", learnable_rows(300))


@pytest.fixture(scope="session")
def serve_artifact(tmp_path_factory):
    """A tiny exported artifact (max_length 32) shared by the runtime and serving tests."""
    from export_fixtures import heldout_csv
    from factories import make_checkpoint

    from deploykit import export
    from deploykit.config import ExportConfig

    root = tmp_path_factory.mktemp("serve-artifact")
    checkpoint = make_checkpoint(root / "checkpoint", "bert", max_length=32)
    # Tiny random models have near-tied logits: INT8 may fail its gate, which is fine here; the
    # fallback search is off so that model.int8.onnx is an all-INT8 static graph, written even
    # if it misses the target bounds (--quantize static).
    return export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / "artifact"),
                                   data=str(heldout_csv(root / "heldout.csv")), split="all",
                                   quantize="static", int8_fallback="off", allow_parity_failure=True))


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory):
    """A small random BERT (hidden 256, 4 layers; fp32 only, max_length 64): costly enough that
    the model, not the HTTP layer, is a server's bottleneck, as with real models on 2 cores."""
    from export_fixtures import heldout_csv
    from factories import make_checkpoint

    from deploykit import export
    from deploykit.config import ExportConfig

    root = tmp_path_factory.mktemp("small-artifact")
    checkpoint = make_checkpoint(root / "checkpoint", "bert", max_length=64, hidden=256, layers=4)
    return export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / "artifact"),
                                   data=str(heldout_csv(root / "heldout.csv")), split="all",
                                   optimize="none", quantize="none", allow_parity_failure=True))


@pytest.fixture(scope="session")
def decoder_dirs(tmp_path_factory):
    """Tiny random Llama, Qwen2 and GPT-2 saved as 'pretrained' folders with a local tokenizer."""
    from factories import DECODERS, save_pretrained_lm

    root = tmp_path_factory.mktemp("decoders")
    return {arch: save_pretrained_lm(root / arch, arch) for arch in DECODERS}


@pytest.fixture(scope="session")
def translation_csv(tmp_path_factory):
    """1,000 word-by-word translations (prompt, completion) with a 'source' column to slice by."""
    import csv

    from factories import translation_rows

    path = tmp_path_factory.mktemp("data") / "translate.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "completion", "source"])
        writer.writerows((p, c, "short" if len(c.split()) < 4 else "long") for p, c in translation_rows(1000))
    return path


@pytest.fixture(scope="session")
def generation_artifacts(tmp_path_factory, translation_csv):
    """Tiny random Llama, Qwen2 and GPT-2 checkpoints exported with their KV cache (fp32, fused,
    weight-only INT8), parity checked on 24 held-out prompts: {arch: (checkpoint, artifact)}."""
    from factories import DECODERS, make_lm_checkpoint

    from deploykit import export
    from deploykit.config import ExportConfig

    root = tmp_path_factory.mktemp("generation")
    out = {}
    for arch in DECODERS:
        checkpoint = make_lm_checkpoint(root / f"{arch}-checkpoint", arch, translation_csv)
        out[arch] = (checkpoint, export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / f"{arch}-artifact"),
                                                         name=f"tiny-{arch}", max_eval_samples=24)))
    return out


@pytest.fixture(scope="session")
def kubectl():
    """The kubectl binary (a test that needs it fails under CI without it, else skips)."""
    from outside_tools import require_binary

    return require_binary("kubectl")


@pytest.fixture(scope="session")
def pytriton_venv():
    """The virtual environment holding the real tritonserver, built on first use."""
    from outside_tools import pytriton_venv

    return pytriton_venv()


@pytest.fixture(scope="session")
def multi_label_run(tmp_path_factory):
    """A tiny BERT fine-tuned on a multi-label CSV (labels joined by '|', some rows without one) and
    exported (fp32, fused, static INT8): (the CSV, the checkpoint, the artifact), shared by the
    multi-label tests."""
    from factories import multi_label_rows, write_csv

    from deploykit import export, train
    from deploykit.config import ExportConfig, TrainConfig
    from deploykit.tasks.classification.example import pretrained

    root = tmp_path_factory.mktemp("multi-label")
    csv = write_csv(root / "topics.csv", multi_label_rows(400), label="topics")
    checkpoint = train.run(TrainConfig(data=str(csv), model=str(pretrained(root / "pretrained")), out=str(root / "run"),
                                       label_column="topics", problem_type="multi-label", label_separator="|",
                                       max_steps=60, batch_size=16, max_length=32, eval_every=30, lr=5e-3,
                                       class_weights="auto"))
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / "artifact"), name="topics",
                                       quantize="static", int8_fallback="off", allow_parity_failure=True))
    return csv, checkpoint, artifact


@pytest.fixture(scope="session")
def pair_run(tmp_path_factory):
    """A tiny BERT cross-encoder fine-tuned as a reranker (--problem-type relevance, query and document
    columns, candidates kept with their query by --group-column) and exported: (the CSV, the
    checkpoint, the artifact), shared by the text-pair tests."""
    import csv as csv_module

    from factories import pair_rows

    from deploykit import export, train
    from deploykit.config import ExportConfig, TrainConfig
    from deploykit.tasks.classification.example import pretrained

    root = tmp_path_factory.mktemp("pairs")
    path = root / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv_module.writer(fh)
        writer.writerow(["qid", "query", "document", "relevant"])
        writer.writerows(pair_rows(90))
    checkpoint = train.run(TrainConfig(data=str(path), model=str(pretrained(root / "pretrained")),
                                       out=str(root / "run"), text_column="query", text_pair_column="document",
                                       label_column="relevant", group_column="qid", problem_type="relevance", truncation="only_second",
                                       max_steps=60, batch_size=16, max_length=32, eval_every=30, lr=5e-3))
    artifact = export.run(ExportConfig(checkpoint=str(checkpoint), out=str(root / "artifact"), name="reranker",
                                       quantize="static", int8_fallback="off", allow_parity_failure=True))
    return path, checkpoint, artifact
