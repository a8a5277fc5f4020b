"""`deploykit predict` on s3:// URLs, against moto's threaded S3 server on 127.0.0.1 (a test double
for S3: no real object store is reachable here). Both engines read a Parquet prefix and write
Parquet parts and the completion marker to another; the settings come from the standard
environment (AWS_ENDPOINT_URL, credentials) or from --storage-options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.scale import storage

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 on a free loopback port, a bucket with 3 Parquet files; the environment to reach it."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    from moto.server import ThreadedMotoServer
    from ray_cluster import environment

    from deploykit.serve.launch import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           **environment(tmp_path_factory.mktemp("ray-auth"))}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="texts")
    local = tmp_path_factory.mktemp("s3-data")
    for f in range(3):
        path = local / f"part-{f}.parquet"
        pq.write_table(pa.table({"id": [f * 100 + i for i in range(100)],
                                 "text": [f"review {f}-{i}: " + "good " * (i % 7) + "bad " * (i % 3) for i in range(100)]}),
                       path)
        client.upload_file(str(path), "texts", f"in/part-{f}.parquet")
    client.put_object(Bucket="texts", Key="in/_SUCCESS", Body=b"")  # skipped: names starting with _
    yield {"env": env, "client": client, "endpoint": env["AWS_ENDPOINT_URL"]}
    server.stop()


def predict(*args, env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "deploykit", "predict", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env={**clean, **env}, check=False)


def rows(client, prefix: str) -> list[dict]:
    import io

    import pyarrow.parquet as pq

    keys = [o["Key"] for o in client.list_objects_v2(Bucket="texts", Prefix=prefix).get("Contents", [])]
    return [r for k in sorted(keys) if k.endswith(".parquet")
            for r in pq.read_table(io.BytesIO(client.get_object(Bucket="texts", Key=k)["Body"].read())).to_pylist()]


def test_both_engines_read_and_write_s3_with_a_marker(s3, serve_artifact, tmp_path, monkeypatch):
    env, client = s3["env"], s3["client"]
    local = predict(serve_artifact, "--data", "s3://texts/in/", "--out", "s3://texts/out-local/", "--id-column", "id",
                    env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    ray = predict(serve_artifact, "--data", "s3://texts/in/", "--out", "s3://texts/out-ray/", "--id-column", "id",
                  "--engine", "ray", "--workers", 1, "--object-store-memory", 100_000_000, env=env)
    assert ray.returncode == 0, ray.stderr[-3000:]
    by_engine = {name: {r["id"]: r for r in rows(client, f"out-{name}/")} for name in ("local", "ray")}
    assert sorted(by_engine["local"]) == sorted(by_engine["ray"]) == list(range(300))
    assert all(by_engine["local"][i]["label"] == by_engine["ray"][i]["label"] for i in range(300))
    # read_marker in this process reaches moto through the same AWS_* environment; monkeypatch puts
    # back what was there (the session's RAY_* variables stay: a later Ray in this process needs them).
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    for name in ("local", "ray"):
        marker = storage.read_marker(f"s3://texts/out-{name}/")
        assert marker["rows"] == 300 and marker["engine"] == name
        assert name == "local" or marker["nodes"] == 1  # no --address: a private single-node Ray
        listed = {o["Key"].split("/", 1)[1] for o in client.list_objects_v2(
            Bucket="texts", Prefix=f"out-{name}/")["Contents"]} - {storage.MARKER, ""}  # "": the folder object
        assert {p["file"] for p in marker["parts"]} == listed
    # A rerun into a prefix that holds a run is refused; --overwrite replaces it.
    again = predict(serve_artifact, "--data", "s3://texts/in/part-0.parquet", "--out", "s3://texts/out-local/", env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    again = predict(serve_artifact, "--data", "s3://texts/in/part-0.parquet", "--out", "s3://texts/out-local/",
                    "--overwrite", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted((r["source"], r["row"]) for r in rows(client, "out-local/")) == [("part-0.parquet", i)
                                                                                   for i in range(100)]


def test_storage_options_and_errors_name_the_fix(s3, serve_artifact, tmp_path):
    only_credentials = {k: v for k, v in s3["env"].items() if k != "AWS_ENDPOINT_URL"}
    options = json.dumps({"endpoint_override": s3["endpoint"], "scheme": "http", "region": "us-east-1"})
    done = predict(serve_artifact, "--data", "s3://texts/in/part-1.parquet", "--out", tmp_path / "p.jsonl",
                   "--storage-options", options, env=only_credentials)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 100
    missing = predict(serve_artifact, "--data", "s3://texts/nothing-here/", "--out", tmp_path / "q.jsonl",
                      env=s3["env"])
    assert missing.returncode == 2 and "s3://texts/nothing-here/ does not exist" in missing.stderr
    bad = predict(serve_artifact, "--data", "s3://texts/in/", "--storage-options", "{not json", env=s3["env"])
    assert bad.returncode == 2 and "--storage-options is not valid JSON" in bad.stderr
    assert not (tmp_path / "q.jsonl").exists()
