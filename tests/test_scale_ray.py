"""`deploykit predict --engine ray` against a real two-node Ray cluster on this machine.

The cluster (tests/ray_cluster.py: head on 127.0.0.2, worker on 127.0.0.3, 2 CPUs each, no
dashboard, no usage stats) is started once for the module and stopped by its processes' pids.
Against it: the Ray engine scores a Parquet folder (4 files x 500 rows with over-length, non-ASCII
and tokenizer-empty texts) exactly as the local engine does, row for row; its actors spread over
both nodes; a scorer actor killed mid-run leaves the output complete, every row exactly once; the
marker and --overwrite; errors raised in read tasks and actors keep their exit codes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploykit.manifest import BATCH_INDEPENDENCE_ATOL, Manifest
from deploykit.scale import storage

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Texts that pass str.strip() but from which BERT's normalizer keeps no token (zero-width space,
# byte-order mark, lone combining accents): the model scores [CLS] [SEP] alone.
EMPTY_AFTER_NORMALIZING = ["\u200b", "\ufeff\u200b", "\u0301\u0301", "\u200d \u200c"]
NON_ASCII = ["très bien, merci", "ужасно плохо", "非常好的一天", "🙂🙂 great 🙂", "naïve café ☕"]


def texts(n: int, seed: int) -> list[str]:
    import random

    from factories import learnable_rows

    rng = random.Random(seed)
    base = [t for t, _ in learnable_rows(n, seed)]
    out = []
    for i, text in enumerate(base):
        kind = i % 10
        if kind == 0:
            text = " ".join([text] * 20)  # far over max_length (32): truncated
        elif kind == 1:
            text = rng.choice(NON_ASCII) + " " + text
        elif kind == 2:
            text = rng.choice(EMPTY_AFTER_NORMALIZING)
        out.append(text)
    return out


def write_folder(folder: Path, files: int = 4, rows: int = 500) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    for f in range(files):
        ids = [f"doc-{f}-{i}" for i in range(rows)]
        pq.write_table(pa.table({"id": ids, "text": texts(rows, seed=f), "extra": list(range(rows))}),
                       folder / f"part-{f}.parquet", row_group_size=128)
    return folder


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory) -> dict[str, str]:
    from ray_cluster import environment

    return environment(tmp_path_factory.mktemp("ray-auth"))


def deploykit(*args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploykit", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **env}, check=False)


def read_parts(folder: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for part in sorted(folder.glob("*.parquet")) for row in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def cluster(ray_env):
    from ray_cluster import start

    cluster = start(env=ray_env)
    yield cluster
    cluster.stop()
    assert cluster.processes() == []


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("scale") / "in")


@pytest.fixture(scope="module")
def local(serve_artifact, data, tmp_path_factory, ray_env):
    """The local engine's answers on the same rows, by id."""
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    done = deploykit("predict", serve_artifact, "--data", data, "--id-column", "id", "--out", out, "--threads", "1",
                      env=ray_env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["id"]: r for r in rows}


def test_ray_engine_scores_every_row_once_as_the_local_engine_does(cluster, serve_artifact, data, local, tmp_path, ray_env):
    out = tmp_path / "out"
    done = deploykit("predict", serve_artifact, "--data", data, "--engine", "ray", "--address", cluster.address,
                     "--workers", 2, "--threads-per-worker", 1, "--id-column", "id", "--out", out, env=ray_env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_parts(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(local) == 2000  # no duplicate, none lost
    assert set(ids) == set(local)
    assert all(set(r) == {"id", "label", "score", "scores", "truncated"} for r in rows)
    worst = 0.0
    for row in rows:
        mine = local[row["id"]]
        assert row["label"] == mine["label"] and row["truncated"] == mine["truncated"]
        worst = max(worst, *(abs(row["scores"][k] - mine["scores"][k]) for k in mine["scores"]))
    assert worst <= BATCH_INDEPENDENCE_ATOL
    assert sum(r["truncated"] for r in rows) >= 200  # the over-length texts were in there
    # The completion marker, written last, describes exactly what is there.
    marker = json.loads((out / storage.MARKER).read_text())
    assert marker["rows"] == 2000 and marker["engine"] == "ray" and marker["nodes"] == 2
    assert sorted(p["file"] for p in marker["parts"]) == sorted(p.name for p in out.glob("*.parquet"))
    assert marker["manifest_sha256"] == hashlib.sha256((serve_artifact / "manifest.json").read_bytes()).hexdigest()
    assert marker["variant"] == Manifest.read(serve_artifact).default_variant
    assert marker["artifact"] == Manifest.read(serve_artifact).name and marker["batch_dependent_allowed"] is False
    # A rerun into the same folder refuses (before it starts Ray); --overwrite deletes the old parts first.
    again = deploykit("predict", serve_artifact, "--data", data, "--engine", "ray", "--address", cluster.address,
                      "--id-column", "id", "--out", out, env=ray_env)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "a complete run" in again.stderr
    old_parts = {p.name for p in out.glob("*.parquet")}
    again = deploykit("predict", serve_artifact, "--data", data / "part-0.parquet", "--engine", "ray",
                      "--address", cluster.address, "--out", out, "--overwrite", env=ray_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not old_parts & {p.name for p in out.glob("*.parquet")}
    rows = read_parts(out)  # no --id-column: each row carries its file and row number
    assert sorted((r["source"], r["row"]) for r in rows) == [("part-0.parquet", i) for i in range(500)]
    assert json.loads((out / storage.MARKER).read_text())["rows"] == 500


def test_scorer_actors_spread_over_both_nodes_through_the_python_api(cluster, serve_artifact):
    out = cluster.python(f"""
import ray.data
from deploykit.scale.ray import score
ds = ray.data.from_items([{{"text": f"text number {{i}}", "n": i}} for i in range(400)], override_num_blocks=8)
rows = score(ds, {str(serve_artifact)!r}, workers=2, batch_rows=25).take_all()
# The actor table straight from the GCS: the state API's HTTP server is the dashboard, which is off here.
from ray._private import state
nodes = sorted({{a["Address"]["NodeID"] for a in state.actors().values() if "BatchScorer" in a["ActorClassName"]}})
print(json.dumps({{"n": sorted(r["n"] for r in rows), "nodes": nodes, "keys": sorted(rows[0])}}))
""", timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n"] == list(range(400))
    assert set(result["keys"]) == {"label", "n", "scores", "score", "truncated"}
    assert sorted(result["nodes"]) == sorted(n["id"] for n in cluster.alive_nodes())  # one actor on each node


def test_a_killed_scorer_actor_is_replaced_and_every_row_is_written_once(cluster, serve_artifact, tmp_path, ray_env):
    big = write_folder(tmp_path / "big", files=8, rows=3000)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "deploykit", "predict", str(serve_artifact), "--data", str(big),
                             "--engine", "ray", "--address", cluster.address, "--workers", "2", "--chunk-size", "50",
                             "--id-column", "id", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ray_env})
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            actors = cluster.actor_pids("MapWorker(MapBatches(BatchScorer))")
            if len(actors) == 2:
                time.sleep(0.5)  # let both load (on a quiet machine the whole run takes seconds)
                if proc.poll() is None and not (out / storage.MARKER).exists():
                    killed = actors[0]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "the run ended before an actor could be killed: make it longer"
    assert proc.returncode == 0, stderr[-3000:]
    ids = [r["id"] for r in read_parts(out)]
    assert len(ids) == len(set(ids)) == 8 * 3000
    assert json.loads((out / storage.MARKER).read_text())["rows"] == 8 * 3000
    assert killed not in cluster.actor_pids("BatchScorer")


def test_errors_in_read_tasks_keep_their_message_and_exit_code_and_leave_nothing(cluster, serve_artifact, data,
                                                                                tmp_path, ray_env):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    pq.write_table(pa.table({"body": ["no text column here"]}), bad / "part-9.parquet")
    out = tmp_path / "out"
    done = deploykit("predict", serve_artifact, "--data", bad, "--engine", "ray", "--address", cluster.address,
                     "--out", out, env=ray_env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "part-9.parquet has no column 'text'" in done.stderr and "--text-column" in done.stderr
    assert not out.exists() or list(out.iterdir()) == []


# --- refusals, checked before Ray scores anything --------------------------------------------------

def test_batch_dependent_variant_is_refused_unless_allowed(serve_artifact, data, tmp_path, ray_env, cluster):
    from dataclasses import replace

    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    manifest = Manifest.read(art)
    name = manifest.default_variant
    variant = manifest.variants[name]
    parity = {**variant.parity, "batch_independence": {"max_abs_diff": 0.05, "rows": 10}}
    replace(manifest, variants={**manifest.variants, name: replace(variant, parity=parity)}).write(art)
    done = deploykit("predict", art, "--data", data, "--engine", "ray", "--out", tmp_path / "out", env=ray_env)
    assert done.returncode == 2
    assert "batch-dependent" in done.stderr and "--allow-batch-dependent" in done.stderr and "0.05" in done.stderr
    assert not (tmp_path / "out").exists()
    # Allowed, the marker says so (a private single-node Ray is tested in test_scale_s3.py).
    done = deploykit("predict", art, "--data", data / "part-1.parquet", "--engine", "ray", "--out", tmp_path / "out",
                     "--allow-batch-dependent", "--workers", 1, "--address", cluster.address, env=ray_env)
    assert done.returncode == 0, done.stderr[-3000:]
    marker = json.loads((tmp_path / "out" / storage.MARKER).read_text())
    assert marker["batch_dependent_allowed"] is True and marker["rows"] == 500 and marker["nodes"] == 2


def test_a_tampered_artifact_is_exit_4_and_a_local_path_with_a_remote_cluster_exit_2(serve_artifact, data, tmp_path, ray_env):
    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    with open(art / "tokenizer.json", "a") as fh:
        fh.write(" ")
    done = deploykit("predict", art, "--data", data, "--engine", "ray", "--out", tmp_path / "out", env=ray_env)
    assert done.returncode == 4 and "tokenizer.json" in done.stderr
    # Nothing is resolved or contacted: the address is judged from its text.
    done = deploykit("predict", serve_artifact, "--data", data, "--engine", "ray", "--out", tmp_path / "out",
                     "--address", "ray://ray-head.example.com:10001", env=ray_env)
    assert done.returncode == 2
    assert f"--data {data}" in done.stderr and "remote Ray cluster" in done.stderr and "s3://" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_actor_verifies_the_artifact_itself(serve_artifact, tmp_path):
    """Each worker may see its own copy of the artifact: the actor's constructor verifies it."""
    import dataclasses

    from deploykit.config import PredictConfig
    from deploykit.errors import IntegrityError
    from deploykit.scale.ray import BatchScorer

    art = tmp_path / "artifact"
    shutil.copytree(serve_artifact, art)
    cfg = dataclasses.asdict(PredictConfig(artifact=str(art), data="-", engine="ray"))
    assert BatchScorer(cfg, "text", ["id"], None).scorer.variant
    (art / Manifest.read(art).variants[Manifest.read(art).default_variant].file).write_bytes(b"not a model")
    with pytest.raises(IntegrityError):
        BatchScorer(cfg, "text", ["id"], None)
