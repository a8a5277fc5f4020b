"""Single-request latency before and after a burst, for both batchers, side by side in one run.

For each batcher (deploykit's dynamic batcher, BentoML's adaptive batching) this starts the real
service (``deploykit serve``) on a free 127.0.0.1 port and measures:

1. the runtime's own latency for one text, in-process (the floor);
2. sequential single-text requests to ``/classify`` (before);
3. a burst: CONCURRENCY threads sending single-text requests as fast as they can (throughput,
   HTTP 503s);
4. sequential single-text requests again (after): the batcher must not keep waiting.

Results are printed as a table and written as JSON; numbers are ratios to the runtime's own
latency measured in the same run, so they compare across machines.

    python3 benchmarks/serve_latency.py --artifact ARTIFACT [--variant int8] [--out FILE.json]
    python3 benchmarks/serve_latency.py --make-minilm /tmp/minilm   # export the packaged MiniLM first
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploykit.serve.launch import free_port  # noqa: E402

TEXT = "the service was quick and the staff were friendly, would come again"


def make_minilm_artifact(folder: Path) -> Path:
    """The packaged MiniLM-L6 with a fresh 3-label head, exported by deploykit (needs `train`)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from factories import LABELS, learnable_rows, minilm_path, write_csv
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from deploykit import checkpoint, export
    from deploykit.config import ExportConfig, TrainConfig

    folder.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=3, id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)})
    ckpt = checkpoint.save(model, AutoTokenizer.from_pretrained(minilm_path()),
                           TrainConfig(out=str(folder)), {"macro_f1": 0.0}, folder / "checkpoint")
    data = write_csv(folder / "heldout.csv", learnable_rows(60))
    return export.run(ExportConfig(checkpoint=str(ckpt), out=str(folder / "artifact"), data=str(data),
                                   split="all", allow_parity_failure=True, overwrite=True))


def post(url: str, texts: list[str]) -> tuple[int, float]:
    body = json.dumps({"texts": texts}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    return status, time.perf_counter() - start


def sequential(url: str, n: int) -> dict[str, float]:
    raw = [post(url, [TEXT])[1] for _ in range(n)]
    times = sorted(raw)
    return {"p50_ms": 1000 * statistics.median(times), "p90_ms": 1000 * times[int(0.9 * (n - 1))],
            "first_ms": 1000 * raw[0]}


def burst(url: str, concurrency: int, per_thread: int) -> dict[str, float]:
    def worker(_):
        return [post(url, [f"{TEXT} {i}"]) for i in range(per_thread)]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for chunk in pool.map(worker, range(concurrency)) for r in chunk]
    wall = time.perf_counter() - start
    ok = [t for status, t in results if status == 200]
    return {"requests": len(results), "ok": len(ok), "errors": len(results) - len(ok),
            "throughput_rps": len(ok) / wall, "p50_ms": 1000 * statistics.median(ok) if ok else 0.0}


def start_server(artifact: Path, variant: str | None, batcher: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "deploykit", "serve", str(artifact), "--port", str(port),
            "--batcher", batcher]
    if variant:
        args += ["--variant", variant]
    if threads:
        args += ["--threads", str(threads)]
    env = {**os.environ, "BENTOML_HOME": tempfile.mkdtemp(prefix="bentoml-bench-"),
           "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{batcher} server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path)
    parser.add_argument("--make-minilm", type=Path, metavar="DIR",
                        help="Export the packaged MiniLM into DIR first and benchmark it.")
    parser.add_argument("--variant")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--requests", type=int, default=100, help="Sequential requests per phase.")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--per-thread", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_latency.json"))
    args = parser.parse_args()
    artifact = make_minilm_artifact(args.make_minilm) if args.make_minilm else args.artifact
    if artifact is None:
        parser.error("give --artifact or --make-minilm")

    from deploykit.runtime import Runtime

    runtime = Runtime(artifact, args.variant, threads=args.threads)
    runtime.predict([TEXT])
    own = []
    for _ in range(args.requests):
        start = time.perf_counter()
        runtime.predict([TEXT])
        own.append(time.perf_counter() - start)
    report = {"artifact": str(artifact), "variant": runtime.variant, "cpus": os.cpu_count(),
              "runtime_p50_ms": 1000 * statistics.median(own), "batchers": {}}
    del runtime
    for batcher in ("deploykit", "bentoml"):
        proc, url = start_server(artifact, args.variant, batcher, args.threads)
        try:
            classify = url + "/classify"
            for _ in range(10):  # warm-up
                post(classify, [TEXT])
            before = sequential(classify, args.requests)
            during = burst(classify, args.concurrency, args.per_thread)
            after = sequential(classify, args.requests)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        report["batchers"][batcher] = {"before": before, "burst": during, "after": after}

    base = report["runtime_p50_ms"]
    print(f"runtime alone (in-process, {report['variant']}): p50 {base:.2f} ms")
    print(f"{'batcher':<10} {'before p50':>11} {'after p50':>10} {'after 1st':>10} {'after/before':>13} "
          f"{'before/runtime':>15} {'burst rps':>10} {'errors':>7}")
    for name, r in report["batchers"].items():
        print(f"{name:<10} {r['before']['p50_ms']:>9.2f}ms {r['after']['p50_ms']:>8.2f}ms "
              f"{r['after']['first_ms']:>8.2f}ms {r['after']['p50_ms'] / r['before']['p50_ms']:>13.2f} "
              f"{r['before']['p50_ms'] / base:>15.2f} {r['burst']['throughput_rps']:>10.1f} "
              f"{r['burst']['errors']:>7}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
