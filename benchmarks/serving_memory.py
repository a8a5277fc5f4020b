"""The service's memory (RSS of the server's processes) through the hostile cases of docs/serving.md.

One ``deploykit serve`` with default settings, then, with the RSS sampled every 0.1 s:

1. idle, after start;
2. three requests of 256 texts of about 15 KB each (every text cut at max_length; ~4 MB
   bodies, the most a request may hold), one after another, then 2 s of rest;
3. 500 clients that each send all but one byte of a 4 MiB body and stall (the body budget
   admits 16 of them, the rest get 503 at once; the admitted ones get 408 after the read
   timeout), then rest;
4. 7,500 requests to random unknown paths (BentoML's per-path metrics are off: nothing grows);
5. 60 s of one-text requests at 8 in flight.

Reports the peak and the settled RSS after each phase (``results.json`` and a Markdown table),
with the load average. Memory, unlike speed, does not depend much on what else runs.

    python3 benchmarks/serving_memory.py --artifact ART [--out benchmarks/results/serving_memory]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploykit.bench.inputs import sample_texts  # noqa: E402
from deploykit.serve.launch import free_port, stop_process_group  # noqa: E402


def rss(pid: int) -> int:
    """RSS of the server (``pid``) and its children (the worker), 0 once it is gone."""
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class Sampler:
    """RSS every 0.1 s in a thread; ``phase`` marks what is going on."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self.phase, self._stop = pid, [], "start", False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.samples.append((time.monotonic(), self.phase, rss(self.pid)))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop = True
        self.thread.join()


def post(url: str, payload: dict, timeout: float = 300) -> int:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def stalled_clients(host: str, port: int, n: int, size: int) -> dict[str, int]:
    """``n`` connections that send all but one byte of a ``size`` body and wait for the answer."""
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    prefix = b'{"texts": ["'
    chunk = prefix + b"a" * (size - 1 - len(prefix))  # all but the last byte

    def one(_: int) -> str:
        try:
            with socket.create_connection((host, port), timeout=60) as sock:
                sock.sendall(head)
                try:
                    sock.sendall(chunk)
                except OSError:
                    pass  # answered (503) and closed while sending
                answer = sock.recv(64)
                return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
        except OSError as exc:
            return type(exc).__name__

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(64) as pool:
        for status in pool.map(one, range(n)):
            counts[status] = counts.get(status, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--flags", default="", help="extra deploykit serve flags, space-separated")
    parser.add_argument("--steady-s", type=float, default=60.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving_memory"))
    args = parser.parse_args()

    texts = sample_texts("tweets", "text", 1024, 0)
    big = [(" ".join(texts[(i * 7 + k) % len(texts)] for k in range(200)))[:15000] for i in range(256)]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="dk-mem-") as tmp:
        env = {**os.environ, "BENTOML_HOME": str(Path(tmp) / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
        log = open(Path(tmp) / "server.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "deploykit", "serve", args.artifact, "--port", str(port),
                                 *args.flags.split()], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while True:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError((Path(tmp) / "server.log").read_text()[-3000:])
                    time.sleep(0.5)
            sampler = Sampler(proc.pid)
            notes = {"load_average_start": list(os.getloadavg())}
            time.sleep(2)
            sampler.phase = "big requests"
            notes["big"] = [post(url + "/classify", {"texts": big}) for _ in range(3)]
            sampler.phase = "after big requests"
            time.sleep(2)
            sampler.phase = "500 stalled bodies"
            notes["stalled"] = stalled_clients("127.0.0.1", port, 500, 4 * 1024 * 1024)
            sampler.phase = "after stalled bodies"
            time.sleep(2)
            sampler.phase = "7500 unknown paths"
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: _get(f"{url}/x/{i}-{os.urandom(4).hex()}"), range(7500)))
            notes["metrics_bytes"] = len(_get(url + "/metrics", body=True))
            sampler.phase = "steady one-text load"
            stop_at = time.monotonic() + args.steady_s

            def client(k: int) -> int:
                n = 0
                while time.monotonic() < stop_at:
                    post(url + "/classify", {"texts": [texts[(k * 131 + n) % len(texts)]]}, timeout=60)
                    n += 1
                return n

            with ThreadPoolExecutor(8) as pool:
                notes["steady_requests"] = sum(pool.map(client, range(8)))
            sampler.phase = "end"
            time.sleep(2)
            sampler.stop()
            notes["load_average_end"] = list(os.getloadavg())
        finally:
            stop_process_group(proc, timeout=60)
    phases: dict[str, dict[str, float]] = {}
    for _, phase, value in sampler.samples:
        p = phases.setdefault(phase, {"peak_mib": 0.0, "last_mib": 0.0})
        p["peak_mib"] = max(p["peak_mib"], value / 2**20)
        p["last_mib"] = value / 2**20
    results = {"artifact": args.artifact, "flags": args.flags, "phases": phases, "notes": notes,
               "peak_mib": max(v / 2**20 for *_, v in sampler.samples)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Service memory through the hostile cases ({Path(args.artifact).name}, flags '{args.flags}')", "",
             f"Load average {notes['load_average_start'][0]:.1f} -> {notes['load_average_end'][0]:.1f}; "
             f"big requests {notes['big']}; stalled clients {notes['stalled']}; /metrics after the unknown "
             f"paths {notes['metrics_bytes']} bytes; {notes['steady_requests']} steady requests.", "",
             "| phase | peak RSS MiB | RSS at its end MiB |", "|---|---|---|"]
    lines += [f"| {phase} | {p['peak_mib']:.0f} | {p['last_mib']:.0f} |" for phase, p in phases.items()]
    lines.append(f"\nPeak over the whole battery: {results['peak_mib']:.0f} MiB (server and worker processes).")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())


def _get(url: str, body: bool = False):
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            data = resp.read()
            return data if body else resp.status
    except urllib.error.HTTPError as err:
        return err.read() if body else err.code


if __name__ == "__main__":
    main()
