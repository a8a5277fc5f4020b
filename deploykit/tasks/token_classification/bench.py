"""token-classification's benchmarks: texts in, entities out, engine against engine; and the online load
generator of ``/ner`` and the v2 protocol (ENTITIES).

Offline engines (each in its own process, ``deploykit.bench.engines``; every call takes a batch of
texts and returns their entities with ``--bench-aggregation``, tokenization included, as a user's
code would):

- ``pytorch``: ``transformers.pipeline("token-classification")`` on the checkpoint, PyTorch eager,
  ``batch_size`` = the cell's batch, the tokenizer's ``model_max_length`` the manifest's;
- ``optimum``: the same pipeline on Optimum's ``ORTModelForTokenClassification`` running the
  artifact's default variant's file (the same INT8 file the runtime serves);
- ``optimum-quantized``: Optimum's own INT8 of the checkpoint (its export, then ``ORTQuantizer``
  with ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)``: the one-liner of
  Optimum's documentation), through the same pipeline;
- ``runtime``: deploykit's ``Runtime.predict`` on one variant (windows, token-budget batches, the
  hand-written aggregation).

A cell is timed by the classifier's ``measure`` (latency percentiles, texts/s, tokens/s).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploykit.bench import report
from deploykit.bench.online import run_levels
from deploykit.config import BenchOfflineConfig, BenchOnlineConfig, int_list
from deploykit.manifest import Manifest
from deploykit.tasks.classification import bench as classification_bench
from deploykit.tasks.classification.bench import measure  # noqa: F401  (the engines' cell timer)
from deploykit.tasks.token_classification.head import TokenClassification
from deploykit.tasks.token_classification.runtime import Runtime

log = logging.getLogger(__name__)

Call = Callable[[Sequence[str]], int]
QUANTIZED_FILE = "model_quantized.onnx"


class Offline:
    """The token classifier's offline benchmark (see ``deploykit.bench.offline.Offline``)."""

    kind = "offline"
    ratio = ("texts_per_s", "throughput_vs_pytorch")

    def __init__(self, cfg: BenchOfflineConfig, manifest: Manifest) -> None:
        self.cfg, self.manifest = cfg, manifest
        self.head = manifest.head_as(TokenClassification)
        self.max_length = manifest.max_length
        self.max_batch = max(int_list(cfg.batch_sizes))

    def input_sets(self) -> dict[str, dict[str, Any]]:
        """The data set's texts (their real lengths; long ones are windowed by every engine)."""
        tokenizer = classification_bench.untruncated_tokenizer(self.cfg.artifact)
        return {"data": classification_bench.data_set(self.cfg, tokenizer)}

    def engine(self, engine: str, common: dict[str, Any], checkpoint: str | None, out: Path) -> dict[str, dict[str, Any]]:
        """``optimum-quantized``: Optimum's own dynamic INT8 of the checkpoint, built in ``out`` first."""
        if checkpoint is None:
            log.warning("no checkpoint (give --checkpoint): skipping %s, which quantizes the checkpoint with "
                        "Optimum", engine)
            return {}
        folder = optimum_quantized(Path(checkpoint), out / "optimum-quantized")
        return {"optimum-quantized": {**common, "kind": "optimum", "artifact": str(folder), "file": QUANTIZED_FILE,
                                      "variant": "dynamic avx512_vnni per-channel"}}

    def spec(self) -> dict[str, Any]:
        return {"aggregation": self.cfg.bench_aggregation, "stride": self.head.stride}

    def message(self) -> dict[str, Any]:
        return {}

    def facts(self) -> dict[str, Any]:
        return {"aggregation": self.cfg.bench_aggregation, "stride": self.head.stride}

    def write(self, out: Path, results: dict[str, Any]) -> None:
        report.write(out, results)


def optimum_quantized(checkpoint: Path, work: Path) -> Path:
    """Optimum's export of ``checkpoint`` quantized by ``ORTQuantizer`` (dynamic, avx512_vnni,
    per-channel), in ``work`` (reused while the checkpoint's weights are the same).

    Returns:
        The folder holding ``model_quantized.onnx``, ``config.json`` and the tokenizer.
    """
    from deploykit.files import sha256_file

    weights = checkpoint / "model.safetensors"
    key = sha256_file(weights) if weights.is_file() else str(checkpoint.resolve())
    stamp = work / "key.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and (work / QUANTIZED_FILE).is_file():
        log.info("optimum-quantized: reusing %s", work)
        return work
    from optimum.onnxruntime import ORTModelForTokenClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    shutil.rmtree(work, ignore_errors=True)
    base = work.parent / f"{work.name}-base"
    shutil.rmtree(base, ignore_errors=True)
    log.info("optimum-quantized: Optimum's export and dynamic avx512_vnni INT8 of %s", checkpoint)
    ORTModelForTokenClassification.from_pretrained(checkpoint, export=True).save_pretrained(base)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(base)
    quantizer = ORTQuantizer.from_pretrained(base)
    quantizer.quantize(save_dir=work, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False,
                                                                                            per_channel=True))
    for item in base.iterdir():  # config and tokenizer files beside the quantized model
        if item.suffix != ".onnx" and not (work / item.name).exists():
            shutil.copy(item, work / item.name)
    shutil.rmtree(base)
    stamp.write_text(json.dumps({"key": key}))
    return work


def _tokenizer(spec: dict[str, Any]) -> Any:
    """The checkpoint's fast tokenizer (else the artifact's), windowing at the manifest's max_length."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.get("checkpoint"):
        tokenizer = AutoTokenizer.from_pretrained(spec["checkpoint"])
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["artifact"]) / "tokenizer.json"))
    tokenizer.model_max_length = spec["max_length"]
    return tokenizer


def _counter(tokenizer: Any) -> Callable[[Sequence[str]], int]:
    """Tokens of texts (cached per text, so that a cell times the engine, not the count)."""
    counts: dict[str, int] = {}

    def count(texts: Sequence[str]) -> int:
        missing = [t for t in texts if t not in counts]
        if missing:
            for text, ids in zip(missing, tokenizer(missing, add_special_tokens=False)["input_ids"]):
                counts[text] = len(ids)
        return sum(counts[t] for t in texts)

    return count


def _pipeline_call(model: Any, spec: dict[str, Any]) -> Call:
    """A batch of texts through ``transformers.pipeline("token-classification")`` on ``model``."""
    from transformers import pipeline

    tokenizer = _tokenizer(spec)
    pipe = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu",
                    aggregation_strategy=spec["aggregation"],
                    **({} if spec["aggregation"] == "none" else {"stride": spec["stride"]}))
    count = _counter(tokenizer)

    def call(texts: Sequence[str]) -> int:
        pipe(list(texts), batch_size=len(texts))
        return count(texts)

    return call


def _pytorch(spec: dict[str, Any]) -> Call:
    import torch
    from transformers import AutoModelForTokenClassification

    torch.set_num_threads(spec["threads"])
    model = AutoModelForTokenClassification.from_pretrained(spec["checkpoint"]).eval()
    return _pipeline_call(model, spec)


def _optimum(spec: dict[str, Any]) -> Call:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForTokenClassification

    options = ort.SessionOptions()
    # Same thread count as every other engine; the rest is Optimum's own defaults.
    options.intra_op_num_threads = spec["threads"]
    model = ORTModelForTokenClassification.from_pretrained(spec["artifact"], file_name=spec["file"],
                                                           provider="CPUExecutionProvider", session_options=options)
    return _pipeline_call(model, spec)


def _runtime(spec: dict[str, Any]) -> Call:
    # A single caller calling back to back, like Optimum's session (which spins by onnxruntime's
    # default): the runtime's single-caller setting.
    runtime = Runtime(spec["artifact"], spec["variant"], threads=spec["threads"],
                      max_batch_size=spec["max_batch_size"], spin=True)
    aggregation = spec["aggregation"]

    def call(texts: Sequence[str]) -> int:
        rows = runtime.tokenize(texts)
        runtime.entities(texts, rows, runtime.logits_of(rows), aggregation)
        return sum(r.length - sum(r.special) for r in rows)

    return call


ENGINES: dict[str, Callable[[dict[str, Any]], Call]] = {
    "pytorch": _pytorch, "optimum": _optimum, "runtime": _runtime}


# --- online ----------------------------------------------------------------------------------

class Target:
    """How to send ``texts`` to a token-classification service in one request and check the answer."""

    def __init__(self, cfg: BenchOnlineConfig) -> None:
        base = cfg.url.rstrip("/")
        self.protocol = cfg.protocol
        self.url = f"{base}/ner" if cfg.protocol == "ner" else f"{base}/v2/models/{cfg.model}/infer"
        self.hint = " (check --model: the served model's name)" if cfg.protocol == "ner-v2" else ""

    def body(self, texts: list[str]) -> dict[str, Any]:
        if self.protocol == "ner":
            return {"texts": texts}
        return {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}

    def valid(self, answer: Any, n: int) -> bool:
        """Whether a 200 answer holds one entity list per text."""
        if not isinstance(answer, dict):
            return False
        if self.protocol == "ner":
            return isinstance(answer.get("entities"), list) and len(answer["entities"]) == n
        outputs = {o.get("name"): o for o in answer.get("outputs", []) if isinstance(o, dict)}
        entities = outputs.get("ENTITIES")
        return entities is not None and entities.get("shape", [0])[0] == n


class Online(classification_bench.Online):
    """The token classifier's load generator (see ``deploykit.bench.online.Online``): the classifier's,
    sending ``--texts-per-request`` texts to ``/ner`` or the v2 route."""

    async def levels(self, texts: list[str]) -> list[dict[str, Any]]:
        return await run_levels(self.cfg, texts, Target(self.cfg))

    def facts(self) -> dict[str, Any]:
        return {"model": self.cfg.model if self.cfg.protocol == "ner-v2" else None}
