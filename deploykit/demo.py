"""``deploykit demo``: the whole pipeline on the built-in tweets and the packaged MiniLM.

Each stage calls the real stage entry point in-process (``train.run``, ``evaluation.run``,
``export.run``, ``build.run``, ``triton_repo.run``, ``k8s.render``); the service runs as a real
``bentoml serve`` subprocess on 127.0.0.1 and a free port, and is always stopped. Everything
lands in one folder:

    DIR/run/            training run (checkpoint/, metrics.jsonl, train_curve.png)
    DIR/eval/           held-out evaluation of the PyTorch checkpoint
    DIR/artifact/       fp32, fused (opt) and INT8 ONNX with manifest.json (parity verified)
    DIR/triton_repo/    Triton model repository
    DIR/k8s/            kustomize overlay for the bento's image
    DIR/logs/           demo.log (every stage's log), serve.log (the service)
    DIR/summary.md, DIR/summary.json

A stage that fails stops the demo with its exit code and a message naming the stage; what the
earlier stages wrote stays, and summary.json records the failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.config import DemoConfig
from deploykit.errors import BadInputError, DeployKitError

log = logging.getLogger(__name__)

STAGES = ["baseline", "train", "evaluate", "export", "offline", "build", "serve", "classify",
          "online", "stop", "triton", "k8s", "summary"]
WRITTEN = ["data", "run", "eval", "artifact", "bench-online", "triton_repo", "k8s", "logs", "summary.md",
           "summary.json"]
# Texts a user might send; the held-out tweets that follow them are real, labelled data.
SAMPLE_TEXTS = ["I love this new phone, the camera is amazing!",
                "Worst customer service ever. Never flying with them again.",
                "The meeting has been moved to 3pm on Thursday."]


@dataclass(frozen=True)
class Plan:
    """How much work each stage does (quick: show the path; full: a model worth serving)."""

    sample_rows: int | None      # quick: a stratified sample of the tweets as the whole data set
    val_ratio: float             # smaller held-out splits than training's defaults: every row
    test_ratio: float            # is scored by PyTorch and 3 ONNX variants, which costs minutes
    max_train_samples: int | None
    epochs: float
    max_steps: int | None
    batch_size: int
    max_length: int
    latency_texts: int           # offline batch-1 latency: this many single-text calls
    throughput_texts: int        # offline throughput: this many texts in one call
    online_single: int           # online (deploykit bench online): one-text requests one at a time
    online_concurrency: str      # closed-loop levels (clients in flight) ...
    online_seconds: float        # ... each timed this long ...
    online_warmup: float         # ... after this much untimed load
    allow_parity_failure: bool   # quick: a variant that misses its gate is not served, no stop
    # INT8 parity gates. Full: export's own (agreement 0.99, macro-F1 drop 1 point), met by its
    # fallback search keeping the few worst-quantizing operators in float. Quick: a few steps
    # leave near-tied logits everywhere, so both gates are loose and the search is off (it would
    # keep most of such a graph in float).
    int8_min_agreement: float
    int8_max_f1_drop: float
    int8_fallback: str


# Full: 4,000 training rows reach ~0.72 validation macro-F1 after one epoch (measured by the
# lead), above TF-IDF + LR on the same rows (0.67 held-out macro-F1). 2% / 5% of the 38,158
# tweets (763 validation, 1,908 test rows) keep the held-out scoring inside the 10 minutes.
FULL = Plan(sample_rows=None, val_ratio=0.02, test_ratio=0.05, max_train_samples=4000, epochs=1.0,
            max_steps=None, batch_size=32,
            max_length=128, latency_texts=64, throughput_texts=512, online_single=30,
            online_concurrency="1,8", online_seconds=8.0, online_warmup=1.0,
            allow_parity_failure=False, int8_min_agreement=0.99, int8_max_f1_drop=0.01, int8_fallback="auto")
QUICK = Plan(sample_rows=600, val_ratio=0.1, test_ratio=0.1, max_train_samples=None, epochs=1.0,
             max_steps=4, batch_size=16, max_length=64, latency_texts=8, throughput_texts=64,
             online_single=10, online_concurrency="4", online_seconds=3.0, online_warmup=0.5,
             allow_parity_failure=True, int8_min_agreement=0.8, int8_max_f1_drop=0.1, int8_fallback="off")


class StageFailed(DeployKitError):
    """A demo stage failed; carries the exit code of the error that stopped it."""

    def __init__(self, stage: str, error: BaseException, out: Path) -> None:
        super().__init__(f"demo stage '{stage}' failed: {error}\n(what the earlier stages wrote "
                         f"is in {out}; the full log is {out / 'logs' / 'demo.log'})")
        self.exit_code = getattr(error, "exit_code", 1)


# --- helpers ---------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post_json(url: str, payload: Any, timeout: float = 60.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _prepare_out(cfg: DemoConfig) -> Path:
    """Refuse to mix with an earlier demo's files unless --overwrite; then clear only ours."""
    out = Path(cfg.out).resolve()
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file; choose a folder for the demo")
    present = [name for name in WRITTEN if (out / name).exists()]
    if present and not cfg.overwrite:
        raise BadInputError(f"--out {out} already holds an earlier demo ({', '.join(present)}); "
                            f"pass --overwrite to replace it or choose another --out")
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / "logs").mkdir(parents=True)
    return out


# --- stages ----------------------------------------------------------------------------------

def _quick_sample(out: Path, rows: int, seed: int) -> str:
    """A stratified sample of the built-in tweets as JSONL (text, label): quick's whole data set."""
    from deploykit import data

    frames, text_column, label_column = data.read_source("tweets", "text", "label")
    frame = frames["all"]
    sample = frame.groupby(label_column).sample(frac=rows / len(frame), random_state=seed)
    # JSONL, not CSV: some tweets hold bare carriage returns that CSV readers split rows on.
    path = out / "data" / "tweets-sample.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    sample.rename(columns={text_column: "text", label_column: "label"})[["text", "label"]] \
        .to_json(path, orient="records", lines=True, force_ascii=False)
    return str(path)


def _train_config(out: Path, plan: Plan, data_source: str) -> Any:
    from deploykit.config import TrainConfig

    return TrainConfig(data=data_source, model="minilm", out=str(out / "run"),
                       max_train_samples=plan.max_train_samples, epochs=plan.epochs,
                       max_steps=plan.max_steps, batch_size=plan.batch_size,
                       max_length=plan.max_length, val_ratio=plan.val_ratio,
                       test_ratio=plan.test_ratio, log_every=1)


def _train_detail(metrics: Path, total: int) -> str | None:
    """The latest training step and loss, read from RUN/metrics.jsonl (for the live display)."""
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    train = [r for r in rows if r.get("type") == "train"]
    evals = [r for r in rows if r.get("type") == "eval"]
    if not train:
        return None
    text = f"step {train[-1]['step']}/{total}, loss {train[-1]['loss']:.3f}"
    if evals:
        text += f", validation macro-F1 {evals[-1]['macro_f1']:.3f}"
    return text


def _offline(artifact: Path, checkpoint: Path, texts: list[str], plan: Plan) -> dict[str, Any]:
    """In-process latency (one text per call) and throughput (one big call) of every engine.

    Every engine gets the same texts and the same number of threads, side by side in one run.
    """
    import torch

    from deploykit import checkpoint as ckpt
    from deploykit.bench.stats import summarize_latencies
    from deploykit.runtime import Runtime, available_cpus
    from deploykit.scoring import predict_logits

    threads = available_cpus()
    torch.set_num_threads(threads)
    model, tokenizer = ckpt.load_model(checkpoint)
    manifest = json.loads((artifact / "manifest.json").read_text())
    engines: dict[str, Any] = {"pytorch": lambda batch: predict_logits(
        model, tokenizer, batch, max_length=int(manifest["max_length"]), batch_size=64)}
    skipped = []
    for variant, info in manifest["variants"].items():
        if not info["servable"]:  # the runtime refuses it, and so would the service
            skipped.append(variant)
            continue
        engines[variant] = Runtime(artifact, variant, threads=threads).logits
    single, bulk = texts[:plan.latency_texts], texts[:plan.throughput_texts]
    results: dict[str, Any] = {}
    for name, run in engines.items():
        for text in single[:3]:  # warm-up: first calls allocate
            run([text])
        latencies = [_timed(run, [text]) for text in single]
        seconds = _timed(run, bulk)
        stats = summarize_latencies(latencies)
        results[name] = {"latency_ms_p50": stats["p50_ms"], "latency_ms_p95": stats["p95_ms"],
                         "throughput_texts_per_s": len(bulk) / seconds}
    base = results["pytorch"]
    for row in results.values():
        row["latency_speedup"] = base["latency_ms_p50"] / row["latency_ms_p50"]
        row["throughput_ratio"] = row["throughput_texts_per_s"] / base["throughput_texts_per_s"]
    return {"threads": threads, "latency_texts": len(single), "throughput_texts": len(bulk),
            "engines": results, "not_servable": skipped}


class Service:
    """``deploykit serve`` on an artifact as a subprocess on 127.0.0.1, in its own session.

    Args:
        artifact: The artifact folder.
        port: The port to listen on.
        log_file: Where the service's output goes.
    """

    def __init__(self, artifact: Path, port: int, log_file: Path) -> None:
        from deploykit.config import ServeConfig
        from deploykit.serve import launch

        # launch.command verifies the artifact and builds the same bentoml command as `deploykit serve`.
        argv, env = launch.command(ServeConfig(artifact=str(artifact), port=port))
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = log_file
        with open(log_file, "w") as fh:
            self.proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until ``/readyz`` answers 200.

        Raises:
            DeployKitError: The service exited, or was not ready in time (with its log's tail).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DeployKitError(f"the service exited with code {self.proc.returncode}; "
                                     f"its log {self.log_file} ends with:\n{self._tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise DeployKitError(f"the service was not ready in {timeout:.0f} s; its log "
                             f"{self.log_file} ends with:\n{self._tail()}")

    def _tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Stop bentoml and its workers (the whole session), by the process id."""
        from deploykit.serve.launch import stop_process_group

        stop_process_group(self.proc)


def _classify(service: Service, artifact: Path, texts: list[str], golds: list[str | None]) -> dict[str, Any]:
    """Send real texts through /classify and through tritonclient.http; check both against the artifact.

    Raises:
        DeployKitError: A route failed, or the routes disagree with the artifact run in-process.
    """
    import numpy as np
    import tritonclient.http as httpclient

    from deploykit.runtime import Runtime

    manifest = json.loads((artifact / "manifest.json").read_text())
    variant = manifest["default_variant"]
    status, answer = _post_json(service.url + "/classify", {"texts": texts})
    if status != 200:
        raise DeployKitError(f"/classify answered HTTP {status}: {answer}")
    client = httpclient.InferenceServerClient(service.url.removeprefix("http://"))
    try:
        text = httpclient.InferInput("TEXT", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array(texts, dtype=object))
        result = client.infer(manifest["name"], [text],
                              outputs=[httpclient.InferRequestedOutput("LABEL"),
                                       httpclient.InferRequestedOutput("SCORES")])
        v2_labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("LABEL")]
        v2_scores = result.as_numpy("SCORES")
    finally:
        client.close()
    expected = Runtime(artifact, variant).predict(texts)
    rows = []
    for i, (txt, gold) in enumerate(zip(texts, golds)):
        rows.append({"text": txt, "gold": gold, "classify": answer[i]["label"],
                     "score": answer[i]["score"], "v2": v2_labels[i],
                     "v2_score": float(v2_scores[i].max()), "in_process": expected[i]["label"]})
    disagree = [r for r in rows if not r["classify"] == r["v2"] == r["in_process"]]
    if disagree:
        raise DeployKitError("the service's answers differ from the artifact run in-process: "
                             + "; ".join(f"{r['text'][:40]!r}: /classify {r['classify']}, v2 {r['v2']}, "
                                         f"in-process {r['in_process']}" for r in disagree))
    return {"variant": variant, "model": manifest["name"], "rows": rows}


def _online(service: Service, data_source: str, out: Path, plan: Plan) -> dict[str, Any]:
    """``deploykit bench online`` against the demo's service: one-text requests one at a time,
    then closed-loop load at each concurrency level (bounded in time), then one at a time again.

    Raises:
        DeployKitError: No request of a level succeeded.
    """
    from deploykit.bench import online
    from deploykit.config import BenchOnlineConfig

    folder = online.run(BenchOnlineConfig(
        url=service.url, concurrency=plan.online_concurrency, duration=plan.online_seconds,
        warmup=plan.online_warmup, single_requests=plan.online_single, data=data_source,
        samples=512, out=str(out / "bench-online")))
    levels = json.loads((folder / "results.json").read_text())["levels"]
    failed = [level["label"] for level in levels if level["ok"] == 0]
    if failed:
        raise DeployKitError(f"no request succeeded at level(s) {', '.join(failed)}; see "
                             f"{folder / 'results.md'} and the service log {service.log_file}")
    return {"results": str(folder / "results.md"),
            "levels": [{k: level.get(k) for k in ("label", "mode", "concurrency", "requests", "ok",
                                                  "errors", "texts_per_s", "p50_ms", "p95_ms", "p99_ms")}
                       for level in levels]}


# --- the pipeline ----------------------------------------------------------------------------

class _Capture:
    """Send logging, and whatever the stages print (tqdm bars, warnings, bentoml's output), to
    DIR/logs/demo.log; the screen keeps the live display, warnings and, at the end, the summary."""

    def __init__(self, out: Path, console: Any) -> None:
        from rich.logging import RichHandler

        self.stream = open(out / "logs" / "demo.log", "a", buffering=1, errors="replace")
        self.file_handler = logging.StreamHandler(self.stream)
        self.file_handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        self.screen = RichHandler(console=console, level=logging.WARNING, show_path=False)
        self.root = logging.getLogger()
        self.saved = list(self.root.handlers)
        self.saved_level = self.root.level
        self.redirects = [contextlib.redirect_stdout(self.stream), contextlib.redirect_stderr(self.stream)]

    def __enter__(self) -> "_Capture":
        for handler in self.saved:
            self.root.removeHandler(handler)
        self.root.addHandler(self.file_handler)
        self.root.addHandler(self.screen)
        if self.root.level > logging.INFO or self.root.level == logging.NOTSET:
            self.root.setLevel(logging.INFO)
        for redirect in self.redirects:
            redirect.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for redirect in reversed(self.redirects):
            redirect.__exit__(*exc)
        self.root.removeHandler(self.file_handler)
        self.root.removeHandler(self.screen)
        for handler in self.saved:
            self.root.addHandler(handler)
        self.root.setLevel(self.saved_level)
        self.stream.close()


def run(cfg: DemoConfig) -> Path:
    """Run the whole pipeline and write DIR/summary.md and DIR/summary.json.

    Args:
        cfg: The demo options.

    Returns:
        The summary.md path (its text is also printed to stdout).

    Raises:
        BadInputError: --out holds an earlier demo (without --overwrite).
        StageFailed: A stage failed; its exit code is that of the stage's error.
    """
    from rich.console import Console

    from deploykit import demo_summary
    from deploykit.demo_display import StageDisplay

    plan = QUICK if cfg.quick else FULL
    out = _prepare_out(cfg)
    # Bound to the real stderr now: the stages' own output is redirected to the log below.
    console = Console(file=sys.stderr)
    report: dict[str, Any] = {"status": "running", "mode": "quick" if cfg.quick else "full",
                              "out": str(out), "stages": {}}
    service: Service | None = None
    started = time.monotonic()
    display = StageDisplay(STAGES, console)
    stage = "baseline"
    with _Capture(out, console):
        try:
            with display:
                stage = "baseline"
                with display.stage(stage, "TF-IDF + logistic regression on the training rows") as done:
                    report.update(_stage_baseline(out, plan))
                    done(f"held-out macro-F1 {report['baseline']['test']['macro_f1']:.3f} "
                         f"({report['data']['train_rows']} training rows)")
                train_cfg = _train_config(out, plan, report["data"]["source"])
                steps_per_epoch = report["data"]["train_rows"] // plan.batch_size
                total = plan.max_steps or math.ceil(plan.epochs * steps_per_epoch)

                stage = "train"
                with display.stage(stage, f"fine-tune MiniLM on {report['data']['train_rows']} tweets",
                                   poll=lambda: _train_detail(out / "run" / "metrics.jsonl", total)) as done:
                    from deploykit import train

                    checkpoint = train.run(train_cfg)
                    best = json.loads((checkpoint / "metrics.json").read_text())
                    report["train"] = {"checkpoint": str(checkpoint), "best_step": best.get("step"),
                                       "validation": {k: best[k] for k in ("accuracy", "macro_f1")},
                                       "steps": total, "epochs": plan.epochs, "batch_size": plan.batch_size}
                    done(f"best validation macro-F1 {best['macro_f1']:.3f} at step {best.get('step')}")

                stage = "evaluate"
                with display.stage(stage, "PyTorch checkpoint on the held-out test split") as done:
                    from deploykit import evaluation
                    from deploykit.config import EvalConfig

                    evaluation.run(EvalConfig(checkpoint=str(checkpoint), split="test",
                                              out=str(out / "eval")))
                    metrics = json.loads((out / "eval" / "metrics.json").read_text())
                    report["evaluate"] = {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
                    done(f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} "
                         f"on {metrics['n']} rows")

                stage = "export"
                with display.stage(stage, "ONNX fp32, fused attention, INT8; parity on the test "
                                          "split") as done:
                    from deploykit import export
                    from deploykit.config import ExportConfig

                    artifact = export.run(ExportConfig(
                        checkpoint=str(checkpoint), out=str(out / "artifact"), name="sentiment",
                        allow_parity_failure=plan.allow_parity_failure,
                        int8_min_agreement=plan.int8_min_agreement, int8_max_f1_drop=plan.int8_max_f1_drop,
                        int8_fallback=plan.int8_fallback))
                    manifest = json.loads((artifact / "manifest.json").read_text())
                    report["export"] = demo_summary.export_facts(manifest, checkpoint)
                    report["export"]["gates"] = {"int8_min_agreement": plan.int8_min_agreement,
                                                 "int8_max_f1_drop": plan.int8_max_f1_drop}
                    done(f"default variant {manifest['default_variant']}; parity "
                         + ", ".join(f"{n} {'ok' if v['servable'] else 'FAILED'}"
                                     for n, v in manifest["variants"].items()))

                stage = "offline"
                with display.stage(stage, "in-process latency and throughput: PyTorch vs ONNX") as done:
                    report["offline"] = _offline(artifact, checkpoint, _bench_texts(report), plan)
                    engines = report["offline"]["engines"]
                    best_engine = max(engines, key=lambda n: engines[n]["throughput_texts_per_s"])
                    done(f"{best_engine} {engines[best_engine]['throughput_ratio']:.1f}x PyTorch's "
                         "throughput")

                stage = "build"
                with display.stage(stage, "bento: artifact + service + deploykit source") as done:
                    from deploykit.config import BuildConfig
                    from deploykit.serve import build

                    report["bento"] = build.run(BuildConfig(artifact=str(artifact),
                                                            bentoml_home=cfg.bentoml_home))
                    report["bentoml_home"] = os.environ.get("BENTOML_HOME")
                    done(report["bento"])

                stage = "serve"
                with display.stage(stage, "deploykit serve on 127.0.0.1") as done:
                    port = cfg.port or free_port()
                    service = Service(artifact, port, out / "logs" / "serve.log")
                    service.wait_ready()
                    done(f"{service.url} ready (variant {manifest['default_variant']})")

                stage = "classify"
                with display.stage(stage, "real texts through /classify and tritonclient.http (v2)") as done:
                    texts, golds = _demo_texts(report)
                    report["service"] = {"url": service.url, **_classify(service, artifact, texts, golds)}
                    done(f"{len(texts)} texts: /classify, v2 and in-process agree")

                stage = "online"
                with display.stage(stage, "deploykit bench online against /classify") as done:
                    report["online"] = _online(service, report["data"]["source"], out, plan)
                    top = max(report["online"]["levels"], key=lambda level: level["texts_per_s"])
                    done(f"{top['texts_per_s']:.0f} texts/s at {top['label']}, p50 {top['p50_ms']:.0f} ms")

                stage = "stop"
                with display.stage(stage, "stop the service") as done:
                    service.stop()
                    service = None
                    done("stopped")

                stage = "triton"
                with display.stage(stage, "Triton model repository") as done:
                    from deploykit.config import TritonConfig
                    from deploykit.serve import triton_repo

                    report["triton_repo"] = str(triton_repo.run(TritonConfig(
                        artifact=str(artifact), out=str(out / "triton_repo"), overwrite=True)))
                    done(report["triton_repo"])

                stage = "k8s"
                with display.stage(stage, "Kubernetes overlay for the bento's image") as done:
                    from deploykit.config import KubeConfig
                    from deploykit.deploy import k8s

                    report["k8s"] = str(k8s.render(KubeConfig(image=report["bento"], artifact=str(artifact),
                                                              out=str(out / "k8s"))))
                    done(report["k8s"])

                stage = "summary"
                with display.stage(stage, "summary.md and summary.json") as done:
                    report["status"] = "ok"
                    report["total_seconds"] = time.monotonic() - started
                    report["stages"] = dict(display.elapsed)
                    report["stages_cpu_seconds"] = dict(display.cpu)
                    summary = demo_summary.write(out, report)
                    if not report["beats_baseline"] and not cfg.quick:
                        log.warning("the fine-tuned model did not beat the TF-IDF baseline on the "
                                    "held-out split (see %s)", summary)
                    done(str(summary))
        except BaseException as exc:
            if service is not None:
                service.stop()
            # The traceback goes to demo.log only; the screen gets the one-line reason from the CLI.
            log.info("demo stage %s failed", stage, exc_info=True)
            report.update(status="failed", failed_stage=stage, error=str(exc),
                          total_seconds=time.monotonic() - started, stages=dict(display.elapsed),
                          stages_cpu_seconds=dict(display.cpu))
            demo_summary.write_json(out, report)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise StageFailed(stage, exc, out) from exc
    return summary


def _stage_baseline(out: Path, plan: Plan) -> dict[str, Any]:
    """Load the splits training will use and score the TF-IDF + LR baseline on them."""
    from deploykit import data
    from deploykit.baseline import tfidf_baseline

    source = _quick_sample(out, plan.sample_rows, 42) if plan.sample_rows else "tweets"
    splits = data.load_splits(_train_config(out, plan, source))
    scores = tfidf_baseline(splits.train, {"test": splits.test}, splits.label_names)
    return {"data": {"source": source, "train_rows": len(splits.train),
                     "validation_rows": len(splits.validation), "test_rows": len(splits.test),
                     "labels": splits.label_names},
            # real held-out texts for the classify and benchmark stages ('_' keys stay out of
            # summary.json)
            "_texts": splits.test.texts[:max(plan.throughput_texts, 64)],
            "_golds": [splits.label_names[i] for i in splits.test.labels[:3]],
            "baseline": {"name": "TF-IDF + logistic regression",
                         "test": {k: scores["test"][k] for k in ("accuracy", "macro_f1", "n")}}}


def _bench_texts(report: dict[str, Any]) -> list[str]:
    return report["_texts"]


def _demo_texts(report: dict[str, Any]) -> tuple[list[str], list[str | None]]:
    texts = SAMPLE_TEXTS + report["_texts"][:3]
    return texts, [None] * len(SAMPLE_TEXTS) + report["_golds"]
