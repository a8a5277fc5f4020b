"""The autoscalers' query, for real: Prometheus (Debian's package) scraping `deploykit serve`.

The KEDA trigger's PromQL, as `deploykit k8s --autoscale keda` renders it, is evaluated through
Prometheus's HTTP API while the service idles and while it is overloaded at twice the capacity
the test measures first (tests/test_overload.py's load): the mean queue wait is above the
rendered threshold under overload and near 0 when idle, and the HPA's formula for
``metricType: Value`` (ceil(replicas x value / target)) asks for more pods under overload and for
none when idle. The in-flight gauge matches requests the test holds open, within 1. The HPA and
KEDA control loops themselves need a cluster and are not run here (docs/deployment.md).
Everything listens on 127.0.0.1; Prometheus and the server are stopped by their own pids.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from deploykit.config import KubeConfig
from deploykit.deploy import autoscale, k8s
from deploykit.serve.launch import free_port, stop_process_group
from test_overload import _load, request
from test_serve import start_server, stop_server

NAMESPACE, POD = "ml", "deploykit-5d8f7c9b4-x2x7k"  # the labels Kubernetes pod discovery would set


@pytest.fixture(scope="module")
def prometheus_binary():
    from outside_tools import require_binary

    return require_binary("prometheus")


def start_prometheus(binary: str, target: str, folder) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "deploykit", "scrape_interval": "1s", "scrape_timeout": "900ms",
                            "static_configs": [{"targets": [target],
                                                "labels": {"namespace": NAMESPACE, "pod": POD}}]}]}))
    log = open(folder / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.25)
    stop_process_group(proc)
    pytest.fail("prometheus not ready in 60 s:\n" + (folder / "prometheus.log").read_text()[-3000:])


def query(prometheus: str, promql: str) -> float | None:
    """The query's value now (one series expected), or None when it has no result."""
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        answer = json.loads(resp.read())
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for(condition, timeout: float = 20.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return condition()


@pytest.mark.slow
@pytest.mark.quiet  # idle and overloaded queue waits, at twice the measured capacity
def test_the_rendered_queue_wait_query_in_a_real_prometheus(prometheus_binary, small_artifact, tmp_path):
    from deploykit.bench.inputs import sample_texts

    cfg = KubeConfig(image="x:1", namespace=NAMESPACE, autoscale="keda")
    promql = k8s.queue_wait_query(cfg)
    target_s = cfg.queue_wait_target_ms / 1000
    server, url = start_server(small_artifact, tmp_path, "--variant", "fp32", "--max-queue-wait-ms", "300",
                               "--body-timeout-ms", "30000")
    prom = None
    try:
        prom, prometheus = start_prometheus(prometheus_binary, url.removeprefix("http://"), tmp_path)
        texts = sample_texts("tweets", "text", 512, 0)
        assert wait_for(lambda: query(prometheus, f'up{{namespace="{NAMESPACE}"}}') == 1)
        asyncio.run(_load(url, texts, 4, None, 1, 1.0, (30.0,)))  # a few lone requests
        time.sleep(3)  # scraped
        idle = query(prometheus, promql)
        assert idle is not None and idle < target_s / 10, idle
        assert autoscale.desired_replicas(2, idle, target_s) <= 1  # asks for no more pods (min replicas rule)

        # In flight: requests the test holds open (bodies that stall after their headers).
        held = []
        host, port = url.removeprefix("http://").split(":")
        for _ in range(5):
            sock = socket.create_connection((host, int(port)), timeout=60)
            sock.sendall(request("POST", "/classify", b"", {"Content-Length": "1000"}) + b'{"texts": [')
            held.append(sock)
        # By route: the scrape that reads the gauge is itself in flight, under route="metrics".
        inflight = f'sum(deploykit_inflight_requests{{namespace="{NAMESPACE}",route="classify"}})'
        value = wait_for(lambda: (v := query(prometheus, inflight)) is not None and v >= 4 and v, timeout=10)
        time.sleep(2)  # two more scrapes: the value holds while the requests are held
        steady = query(prometheus, inflight)
        everything = query(prometheus, f'sum(deploykit_inflight_requests{{namespace="{NAMESPACE}"}})')
        for sock in held:
            sock.close()
        assert value and abs(value - 5) <= 1 and abs(steady - 5) <= 1, (value, steady)
        assert abs(everything - 6) <= 1, everything  # the five, and the scrape reading them
        assert wait_for(lambda: query(prometheus, inflight) == 0, timeout=10)

        # Overload: twice the capacity measured now, for 15 s.
        records = asyncio.run(_load(url, texts, 4, None, 8, 3.0, (30.0,)))
        capacity = sum(1 for r in records if r[2] == "200") / 3.0
        records = asyncio.run(_load(url, texts, 4, 2 * capacity, 0, 15.0, (10.0,)))
        loaded = query(prometheus, promql)
        queued = query(prometheus, f'max_over_time(sum(deploykit_queued_tokens{{namespace="{NAMESPACE}"}})[20s:1s])')
        outcomes = {o for *_, o, _ in records}
    finally:
        if prom is not None:
            stop_process_group(prom)
        stop_server(server)
    print(f"capacity {capacity:.1f} req/s; mean queue wait idle {idle * 1000:.2f} ms, overloaded "
          f"{loaded * 1000:.0f} ms (target {target_s * 1000:.0f} ms); outcomes {outcomes}; queued tokens max {queued}")
    assert "503" in outcomes  # it was overloaded
    assert loaded > target_s, loaded
    assert autoscale.desired_replicas(2, loaded, target_s) > 2  # the HPA asks for more pods
    assert queued and queued > 0
