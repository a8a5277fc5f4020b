"""``deploykit demo``: the whole pipeline on the built-in tweets and the packaged MiniLM.

The demo is the table ``STAGES``: each ``Stage`` calls the real entry point of a stage
(``train.run``, ``evaluation.run``, ``export.run``, ``bench.offline.run``, ``build.run``,
``online.run``, ``triton_repo.run``, ``k8s.render``) on a small typed ``DemoState`` that carries
what the stages hand on (checkpoint, artifact, manifest, service) and the facts the summary
reports; one short loop runs the table under the live display. The service runs as a real
``bentoml serve`` subprocess on 127.0.0.1 and a free port, and is always stopped. Everything
lands in one folder:

    DIR/run/            training run (checkpoint/, metrics.jsonl, train_curve.png)
    DIR/eval/           held-out evaluation of the PyTorch checkpoint
    DIR/artifact/       fp32, fused (opt) and INT8 ONNX with manifest.json (parity verified)
    DIR/bench-offline/  deploykit bench offline: PyTorch and each servable variant, one process each
    DIR/bench-online/   deploykit bench online against the service
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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deploykit.config import DemoConfig
from deploykit.errors import BadInputError, DeployKitError
from deploykit.manifest import Manifest
from deploykit.serve.launch import free_port

log = logging.getLogger(__name__)

WRITTEN = ["data", "run", "eval", "artifact", "bench-offline", "bench-online", "triton_repo", "k8s", "logs",
           "summary.md", "summary.json"]
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
    latency_texts: int           # offline latency: at most this many one-text calls per engine ...
    offline_seconds: float       # ... and at least 3, for at least this long (every cell)
    throughput_texts: int        # offline throughput: calls of this many texts
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
    # Full: export's default choice of INT8 scheme (none when no scheme meets the bounds). Quick:
    # static INT8 is written whatever it scores, so every stage has an INT8 variant to show.
    quantize: str


# Full: 4,000 training rows reach ~0.72 validation macro-F1 after one epoch, above TF-IDF + LR
# on the same rows (0.67 held-out macro-F1). 2% / 5% of the 38,158
# tweets (763 validation, 1,908 test rows) keep the held-out scoring inside the 10 minutes.
FULL = Plan(sample_rows=None, val_ratio=0.02, test_ratio=0.05, max_train_samples=4000, epochs=1.0,
            max_steps=None, batch_size=32,
            max_length=128, latency_texts=64, offline_seconds=2.0, throughput_texts=512, online_single=30,
            online_concurrency="1,8", online_seconds=8.0, online_warmup=1.0,
            allow_parity_failure=False, int8_min_agreement=0.99, int8_max_f1_drop=0.01, int8_fallback="auto",
            quantize="auto")
QUICK = Plan(sample_rows=600, val_ratio=0.1, test_ratio=0.1, max_train_samples=None, epochs=1.0,
             max_steps=4, batch_size=16, max_length=64, latency_texts=8, offline_seconds=0.5,
             throughput_texts=64, online_single=10, online_concurrency="4", online_seconds=3.0, online_warmup=0.5,
             allow_parity_failure=True, int8_min_agreement=0.8, int8_max_f1_drop=0.1, int8_fallback="off",
             quantize="static")


class StageFailed(DeployKitError):
    """A demo stage failed; carries the exit code of the error that stopped it."""

    def __init__(self, stage: str, error: BaseException, out: Path) -> None:
        super().__init__(f"demo stage '{stage}' failed: {error}\n(what the earlier stages wrote "
                         f"is in {out}; the full log is {out / 'logs' / 'demo.log'})")
        self.exit_code = getattr(error, "exit_code", 1)


# --- helpers ---------------------------------------------------------------------------------

def _post_json(url: str, payload: Any, timeout: float = 60.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


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


# --- what the stages share ---------------------------------------------------------------------

@dataclass
class DemoState:
    """What the stages hand on to each other, and the facts the summary reports (one field per
    section of summary.json; ``texts``/``golds`` and the live objects stay out of it)."""

    cfg: DemoConfig
    plan: Plan
    out: Path
    started: float
    elapsed: dict[str, float]             # stage -> wall seconds (the display's)
    cpu: dict[str, float]                 # stage -> CPU seconds of this process
    data: dict[str, Any] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)         # held-out tweets for the service
    golds: list[str | None] = field(default_factory=list)
    baseline: dict[str, Any] | None = None
    checkpoint: Path | None = None
    train: dict[str, Any] | None = None
    evaluate: dict[str, Any] | None = None
    artifact: Path | None = None
    manifest: Manifest | None = None
    export: dict[str, Any] | None = None
    offline: dict[str, Any] | None = None
    bento: str | None = None
    bentoml_home: str | None = None
    service: Service | None = None
    answers: dict[str, Any] | None = None                   # summary.json's "service"
    online: dict[str, Any] | None = None
    triton_repo: str | None = None
    k8s: str | None = None

    def summary(self, status: str, **more: Any) -> dict[str, Any]:
        """summary.json's content so far (the sections of the stages that ran)."""
        report: dict[str, Any] = {"status": status, "mode": "quick" if self.cfg.quick else "full",
                                  "out": str(self.out), "stages": dict(self.elapsed)}
        sections = {"data": self.data or None, "baseline": self.baseline, "train": self.train,
                    "evaluate": self.evaluate, "export": self.export, "offline": self.offline,
                    "bento": self.bento, "bentoml_home": self.bentoml_home, "service": self.answers,
                    "online": self.online, "triton_repo": self.triton_repo, "k8s": self.k8s}
        report.update({k: v for k, v in sections.items() if v is not None})
        return {**report, **more, "total_seconds": time.monotonic() - self.started,
                "stages": dict(self.elapsed), "stages_cpu_seconds": dict(self.cpu)}


@dataclass(frozen=True)
class Stage:
    """One row of the demo: its name, what it does (formatted with the state as ``s``), the
    function that does it (returns the line shown when it is done) and an optional live detail."""

    name: str
    title: str
    function: Callable[[DemoState], str]
    poll: Callable[[DemoState], str | None] | None = None


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


def _total_steps(s: DemoState) -> int:
    return s.plan.max_steps or math.ceil(s.plan.epochs * (s.data["train_rows"] // s.plan.batch_size))


def _train_detail(s: DemoState) -> str | None:
    """The latest training step and loss, read from RUN/metrics.jsonl (for the live display)."""
    metrics, total = s.out / "run" / "metrics.jsonl", _total_steps(s)
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


def _baseline(s: DemoState) -> str:
    """Load the splits training will use and score the TF-IDF + LR baseline on them."""
    from deploykit import tasks
    from deploykit.baseline import tfidf_baseline

    source = _quick_sample(s.out, s.plan.sample_rows, 42) if s.plan.sample_rows else "tweets"
    cfg = _train_config(s.out, s.plan, source)
    splits = tasks.get(cfg.task).part("data").load_splits(cfg)
    scores = tfidf_baseline(splits.train, {"test": splits.test}, splits.label_names)
    s.data = {"source": source, "train_rows": len(splits.train), "validation_rows": len(splits.validation),
              "test_rows": len(splits.test), "labels": splits.label_names}
    # Texts a user might send, then real held-out tweets with their gold labels.
    s.texts = SAMPLE_TEXTS + splits.test.texts[:3]
    s.golds = [None] * len(SAMPLE_TEXTS) + [splits.label_names[i] for i in splits.test.labels[:3]]
    s.baseline = {"name": "TF-IDF + logistic regression",
                  "test": {k: scores["test"][k] for k in ("accuracy", "macro_f1", "n")}}
    return f"held-out macro-F1 {s.baseline['test']['macro_f1']:.3f} ({s.data['train_rows']} training rows)"


def _train(s: DemoState) -> str:
    from deploykit import train

    s.checkpoint = train.run(_train_config(s.out, s.plan, s.data["source"]))
    best = json.loads((s.checkpoint / "metrics.json").read_text())
    s.train = {"checkpoint": str(s.checkpoint), "best_step": best.get("step"),
               "validation": {k: best[k] for k in ("accuracy", "macro_f1")},
               "steps": _total_steps(s), "epochs": s.plan.epochs, "batch_size": s.plan.batch_size}
    return f"best validation macro-F1 {best['macro_f1']:.3f} at step {best.get('step')}"


def _evaluate(s: DemoState) -> str:
    from deploykit import evaluation
    from deploykit.config import EvalConfig

    evaluation.run(EvalConfig(checkpoint=str(s.checkpoint), split="test", out=str(s.out / "eval")))
    metrics = json.loads((s.out / "eval" / "metrics.json").read_text())
    s.evaluate = {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "n")}
    return f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} on {metrics['n']} rows"


def _export(s: DemoState) -> str:
    from deploykit import demo_summary, export
    from deploykit.config import ExportConfig

    s.artifact = export.run(ExportConfig(
        checkpoint=str(s.checkpoint), out=str(s.out / "artifact"), name="sentiment",
        allow_parity_failure=s.plan.allow_parity_failure, int8_min_agreement=s.plan.int8_min_agreement,
        int8_max_f1_drop=s.plan.int8_max_f1_drop, int8_fallback=s.plan.int8_fallback, quantize=s.plan.quantize))
    s.manifest = Manifest.read(s.artifact)
    s.export = {**demo_summary.export_facts(s.manifest, s.checkpoint),
                "gates": {"int8_min_agreement": s.plan.int8_min_agreement,
                          "int8_max_f1_drop": s.plan.int8_max_f1_drop}}
    return (f"default variant {s.manifest.default_variant}; parity "
            + ", ".join(f"{n} {'ok' if v.servable else 'FAILED'}" for n, v in s.manifest.variants.items()))


def _offline(s: DemoState) -> str:
    """``deploykit bench offline``: PyTorch and every servable variant, each in its own process,
    on one-text calls (latency) and calls of ``throughput_texts`` texts (throughput)."""
    from deploykit.bench import offline
    from deploykit.config import BenchOfflineConfig

    plan = s.plan
    folder = offline.run(BenchOfflineConfig(
        artifact=str(s.artifact), data=s.data["source"], checkpoint=str(s.checkpoint),
        out=str(s.out / "bench-offline"), engines="pytorch,runtime",
        batch_sizes=f"1,{plan.throughput_texts}", synthetic_lengths="", samples=plan.throughput_texts,
        warmup=1, min_iters=3, min_duration=plan.offline_seconds, max_iters=plan.latency_texts))
    results = json.loads((folder / "results.json").read_text())
    cells = {(c["engine"], c["batch_size"]): c for c in results["cells"] if c["input"] == "data"}
    engines = {}
    for label in results["specs"]:
        single, bulk = cells[(label, 1)], cells[(label, plan.throughput_texts)]
        engines[label.removeprefix("runtime:")] = {
            "latency_ms_p50": single["p50_ms"], "latency_ms_p95": single["p95_ms"],
            "throughput_texts_per_s": bulk["texts_per_s"]}
    base = engines["pytorch"]
    for row in engines.values():
        row["latency_speedup"] = base["latency_ms_p50"] / row["latency_ms_p50"]
        row["throughput_ratio"] = row["throughput_texts_per_s"] / base["throughput_texts_per_s"]
    s.offline = {"threads": results["specs"]["pytorch"]["threads"],
                 "latency_texts": min(cells[(label, 1)]["iters"] for label in results["specs"]),
                 "throughput_texts": plan.throughput_texts,
                 "results": str(folder / "results.md"), "engines": engines,
                 "not_servable": [n for n, v in s.manifest.variants.items() if not v.servable]}
    best = max(engines, key=lambda n: engines[n]["throughput_texts_per_s"])
    return f"{best} {engines[best]['throughput_ratio']:.1f}x PyTorch's throughput"


def _build(s: DemoState) -> str:
    from deploykit.config import BuildConfig
    from deploykit.serve import build

    s.bento = build.run(BuildConfig(artifact=str(s.artifact), bentoml_home=s.cfg.bentoml_home))
    s.bentoml_home = os.environ.get("BENTOML_HOME")
    return s.bento


def _serve(s: DemoState) -> str:
    s.service = Service(s.artifact, s.cfg.port or free_port(), s.out / "logs" / "serve.log")
    s.service.wait_ready()
    return f"{s.service.url} ready (variant {s.manifest.pick().name})"


def _classify(s: DemoState) -> str:
    """Send real texts through /classify and through tritonclient.http; check both against the artifact.

    Raises:
        DeployKitError: A route failed, or the routes disagree with the artifact run in-process.
    """
    import numpy as np
    import tritonclient.http as httpclient

    from deploykit.tasks.classification.runtime import Runtime

    service, texts = s.service, s.texts
    status, answer = _post_json(service.url + "/classify", {"texts": texts})
    if status != 200:
        raise DeployKitError(f"/classify answered HTTP {status}: {answer}")
    client = httpclient.InferenceServerClient(service.url.removeprefix("http://"))
    try:
        text = httpclient.InferInput("TEXT", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array(texts, dtype=object))
        result = client.infer(s.manifest.name, [text], outputs=[httpclient.InferRequestedOutput("LABEL"),
                                                                httpclient.InferRequestedOutput("SCORES")])
        v2_labels = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("LABEL")]
        v2_scores = result.as_numpy("SCORES")
    finally:
        client.close()
    runtime = Runtime(s.artifact)  # the variant the service serves: the same rule, Manifest.pick
    expected = runtime.predict(texts)
    rows = [{"text": txt, "gold": gold, "classify": answer[i]["label"], "score": answer[i]["score"],
             "v2": v2_labels[i], "v2_score": float(v2_scores[i].max()), "in_process": expected[i]["label"]}
            for i, (txt, gold) in enumerate(zip(texts, s.golds))]
    disagree = [r for r in rows if not r["classify"] == r["v2"] == r["in_process"]]
    if disagree:
        raise DeployKitError("the service's answers differ from the artifact run in-process: "
                             + "; ".join(f"{r['text'][:40]!r}: /classify {r['classify']}, v2 {r['v2']}, "
                                         f"in-process {r['in_process']}" for r in disagree))
    s.answers = {"url": service.url, "variant": runtime.variant, "model": s.manifest.name, "rows": rows}
    return f"{len(texts)} texts: /classify, v2 and in-process agree"


def _online(s: DemoState) -> str:
    """``deploykit bench online`` against the demo's service: one-text requests one at a time,
    then closed-loop load at each concurrency level (bounded in time), then one at a time again.

    Raises:
        DeployKitError: No request of a level succeeded.
    """
    from deploykit.bench import online
    from deploykit.config import BenchOnlineConfig

    plan = s.plan
    folder = online.run(BenchOnlineConfig(
        url=s.service.url, concurrency=plan.online_concurrency, duration=plan.online_seconds,
        warmup=plan.online_warmup, single_requests=plan.online_single, data=s.data["source"],
        samples=512, out=str(s.out / "bench-online")))
    levels = json.loads((folder / "results.json").read_text())["levels"]
    failed = [level["label"] for level in levels if level["ok"] == 0]
    if failed:
        raise DeployKitError(f"no request succeeded at level(s) {', '.join(failed)}; see "
                             f"{folder / 'results.md'} and the service log {s.service.log_file}")
    s.online = {"results": str(folder / "results.md"),
                "levels": [{k: level.get(k) for k in ("label", "mode", "concurrency", "requests", "ok",
                                                      "errors", "texts_per_s", "p50_ms", "p95_ms", "p99_ms")}
                           for level in levels]}
    top = max(s.online["levels"], key=lambda level: level["texts_per_s"])
    return f"{top['texts_per_s']:.0f} texts/s at {top['label']}, p50 {top['p50_ms']:.0f} ms"


def _stop(s: DemoState) -> str:
    s.service.stop()
    s.service = None
    return "stopped"


def _triton(s: DemoState) -> str:
    from deploykit.config import TritonConfig
    from deploykit.serve import triton_repo

    s.triton_repo = str(triton_repo.run(TritonConfig(artifact=str(s.artifact), out=str(s.out / "triton_repo"),
                                                     overwrite=True)))
    return s.triton_repo


def _k8s(s: DemoState) -> str:
    from deploykit.config import KubeConfig
    from deploykit.deploy import k8s

    s.k8s = str(k8s.render(KubeConfig(image=s.bento, artifact=str(s.artifact), out=str(s.out / "k8s"))))
    return s.k8s


def _summary(s: DemoState) -> str:
    from deploykit import demo_summary

    report = s.summary("ok")
    path = demo_summary.write(s.out, report)
    if not report["beats_baseline"] and not s.cfg.quick:
        log.warning("the fine-tuned model did not beat the TF-IDF baseline on the held-out split (see %s)", path)
    return str(path)


STAGES = [
    Stage("baseline", "TF-IDF + logistic regression on the training rows", _baseline),
    Stage("train", "fine-tune MiniLM on {s.data[train_rows]} tweets", _train, poll=_train_detail),
    Stage("evaluate", "PyTorch checkpoint on the held-out test split", _evaluate),
    Stage("export", "ONNX fp32, fused attention, INT8; parity on the test split", _export),
    Stage("offline", "deploykit bench offline: PyTorch vs ONNX, one process per engine", _offline),
    Stage("build", "bento: artifact + service + deploykit source", _build),
    Stage("serve", "deploykit serve on 127.0.0.1", _serve),
    Stage("classify", "real texts through /classify and tritonclient.http (v2)", _classify),
    Stage("online", "deploykit bench online against /classify", _online),
    Stage("stop", "stop the service", _stop),
    Stage("triton", "Triton model repository", _triton),
    Stage("k8s", "Kubernetes overlay for the bento's image", _k8s),
    Stage("summary", "summary.md and summary.json", _summary),
]


# --- the pipeline ----------------------------------------------------------------------------

def run(cfg: DemoConfig) -> Path:
    """Run the stage table and write DIR/summary.md and DIR/summary.json.

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

    out = _prepare_out(cfg)
    # Bound to the real stderr now: the stages' own output is redirected to the log below.
    console = Console(file=sys.stderr)
    display = StageDisplay([stage.name for stage in STAGES], console)
    state = DemoState(cfg, QUICK if cfg.quick else FULL, out, time.monotonic(), display.elapsed, display.cpu)
    stage = STAGES[0]
    with _Capture(out, console):
        try:
            with display:
                for stage in STAGES:
                    poll = (lambda stage=stage: stage.poll(state)) if stage.poll else None
                    with display.stage(stage.name, stage.title.format(s=state), poll=poll) as done:
                        done(stage.function(state))
        except BaseException as exc:
            if state.service is not None:
                state.service.stop()
            # The traceback goes to demo.log only; the screen gets the one-line reason from the CLI.
            log.info("demo stage %s failed", stage.name, exc_info=True)
            demo_summary.write_json(out, state.summary("failed", failed_stage=stage.name, error=str(exc)))
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise StageFailed(stage.name, exc, out) from exc
    return out / "summary.md"
