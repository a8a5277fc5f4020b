"""text-classification's benchmarks: the offline engines side by side on texts, and the online
load generator of ``/classify`` and the KServe v2 protocol.

Offline engines (each in its own process, ``deploykit.bench.engines``; all take texts and return
logits, tokenization included, as a user's code would):

- ``pytorch``: transformers' ``AutoModelForSequenceClassification`` on the checkpoint, eager,
  under ``torch.inference_mode()``.
- ``optimum``: Optimum's ``ORTModelForSequenceClassification`` on an ONNX file (of the artifact,
  or, for ``optimum-quantized``, Optimum's own INT8 of the checkpoint: ``optimum_quantized``),
  with the transformers fast tokenizer (what a user of Optimum would write).
- ``runtime``: deploykit's ``Runtime`` on one variant of the artifact.

Inputs: a seeded sample of a data set's texts (their real length distribution) and synthetic
texts of exact token lengths; a cell is timed by ``measure`` (latency percentiles, texts/s,
tokens/s). The reports are ``deploykit.bench.report``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from deploykit.bench import report
from deploykit.bench.inputs import sample_texts, synthetic_texts
from deploykit.bench.online import run_levels
from deploykit.bench.stats import summarize_latencies, time_calls
from deploykit.config import BenchOfflineConfig, BenchOnlineConfig, int_list
from deploykit.manifest import Manifest
from deploykit.tasks.classification.runtime import Runtime

log = logging.getLogger(__name__)

# A call takes a batch of texts and returns how many (unpadded) tokens it ran.
Call = Callable[[Sequence[str]], int]


# --- offline ---------------------------------------------------------------------------------


def untruncated_tokenizer(artifact: str) -> Any:
    """The artifact's tokenizer with truncation and padding off (texts' real token counts)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(artifact) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def data_set(cfg: BenchOfflineConfig, tokenizer: Any) -> dict[str, Any]:
    """The input set of the data set's texts (``--samples`` of them, seeded), with their real
    token counts (mean and longest, by ``untruncated_tokenizer``) for the report."""
    texts = sample_texts(cfg.data, cfg.text_column, cfg.samples, cfg.seed)
    lengths = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    return {"texts": texts, "batch_sizes": int_list(cfg.batch_sizes),
            "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths)}


class Offline:
    """The classifier's offline benchmark (see ``deploykit.bench.offline.Offline``)."""

    kind = "offline"
    ratio = ("texts_per_s", "throughput_vs_pytorch")

    def __init__(self, cfg: BenchOfflineConfig, manifest: Manifest) -> None:
        self.cfg, self.manifest = cfg, manifest
        # Every engine truncates at the same length: the manifest's, or the longest synthetic input.
        self.max_length = max([manifest.max_length] + int_list(cfg.synthetic_lengths))
        synthetic = int_list(cfg.synthetic_batch_sizes) if int_list(cfg.synthetic_lengths) else []
        self.max_batch = max(int_list(cfg.batch_sizes) + synthetic)

    def input_sets(self) -> dict[str, dict[str, Any]]:
        """The data set's texts, then one synthetic set per length."""
        cfg = self.cfg
        tokenizer = untruncated_tokenizer(cfg.artifact)
        sets = {"data": data_set(cfg, tokenizer)}
        texts = sets["data"]["texts"]
        largest = max(int_list(cfg.synthetic_batch_sizes))
        for length in int_list(cfg.synthetic_lengths):
            synthetic = synthetic_texts(tokenizer, texts, length, max(largest, 8))
            got = [len(e.ids) for e in tokenizer.encode_batch(synthetic)]
            sets[f"synthetic-{length}"] = {"texts": synthetic, "batch_sizes": int_list(cfg.synthetic_batch_sizes),
                                           "mean_tokens": sum(got) / len(got), "max_tokens": max(got)}
        return sets

    def engine(self, engine: str, common: dict[str, Any], checkpoint: str | None, out: Path) -> dict[str, dict[str, Any]]:
        """``optimum-quantized``: Optimum's own best INT8 of the checkpoint, built in ``out`` first."""
        if checkpoint is None:
            log.warning("no checkpoint (give --checkpoint): skipping %s, which quantizes the checkpoint "
                        "with Optimum", engine)
            return {}
        from deploykit.tasks.classification import optimum_quantized

        choice = optimum_quantized.prepare(checkpoint, self.manifest, out, self.cfg.optimum_quantized_rows,
                                           self.max_length)
        # ORTModel loads the folder Optimum wrote; the tokenizer is the checkpoint's, as for "optimum".
        return {"optimum-quantized": {**common, "kind": "optimum", "artifact": choice["folder"],
                                      "file": choice["file"], "variant": choice["config"],
                                      "candidates": choice["candidates"]}}

    def spec(self) -> dict[str, Any]:
        return {}

    def message(self) -> dict[str, Any]:
        return {}

    def facts(self) -> dict[str, Any]:
        return {}

    def write(self, out: Path, results: dict[str, Any]) -> None:
        report.write(out, results)


def measure(call: Call, texts: list[str], msg: dict[str, Any]) -> dict[str, Any]:
    """Time one (input set, batch size) cell: consecutive, wrapping slices of ``texts``."""
    batch = msg["batch"]

    def one(i: int) -> int:
        # Consecutive, wrapping slices: every call sees fresh texts of the set.
        start = (i * batch) % len(texts)
        chunk = (texts[start:] + texts[:start])[:batch]
        if len(chunk) < batch:  # a pool smaller than the batch repeats itself
            chunk = (chunk * (batch // max(1, len(chunk)) + 1))[:batch]
        return call(chunk)

    latencies, tokens, wall = time_calls(one, warmup=msg["warmup"], min_iters=msg["min_iters"],
                                         min_duration=msg["min_duration"], max_iters=msg.get("max_iters"))
    return {**summarize_latencies(latencies), "iters": len(latencies), "texts_per_s": len(latencies) * batch / wall,
            "tokens_per_s": tokens / wall, "wall_s": wall}


def _hf_tokenizer(spec: dict[str, Any]):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.get("checkpoint"):
        return AutoTokenizer.from_pretrained(spec["checkpoint"])
    return PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["artifact"]) / "tokenizer.json"))


def _pytorch(spec: dict[str, Any]) -> Call:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(spec["threads"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["checkpoint"]).eval()
    tokenizer = _hf_tokenizer(spec)
    max_length = spec["max_length"]

    def call(texts: Sequence[str]) -> int:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        with torch.inference_mode():
            model(**enc).logits.numpy()
        return int(enc["attention_mask"].sum())

    return call


def _optimum(spec: dict[str, Any]) -> Call:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification

    options = ort.SessionOptions()
    # Same thread count as every other engine; the rest is Optimum's own defaults.
    options.intra_op_num_threads = spec["threads"]
    model = ORTModelForSequenceClassification.from_pretrained(
        spec["artifact"], file_name=spec["file"], provider="CPUExecutionProvider",
        session_options=options)
    tokenizer = _hf_tokenizer(spec)
    max_length = spec["max_length"]

    def call(texts: Sequence[str]) -> int:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        if "token_type_ids" not in model.input_names:
            enc.pop("token_type_ids", None)
        model(**enc).logits.numpy()
        return int(enc["attention_mask"].sum())

    return call


def _runtime(spec: dict[str, Any]) -> Call:
    # The benchmark is a single caller calling back to back, like Optimum's session (which
    # spins by onnxruntime's default): the runtime's single-caller setting (Runtime's ``spin``).
    runtime = Runtime(spec["artifact"], spec["variant"], threads=spec["threads"],
                      max_batch_size=spec["max_batch_size"], spin=True)
    # The synthetic long inputs may exceed the manifest's max_length; every engine truncates at
    # the same length so that all of them compute the same tokens.
    runtime.max_length = spec["max_length"]
    runtime.tokenizer.enable_truncation(spec["max_length"])

    def call(texts: Sequence[str]) -> int:
        rows = runtime.tokenize(texts)
        runtime.logits_of(rows)
        return sum(r.length for r in rows)

    return call


ENGINES: dict[str, Callable[[dict[str, Any]], Call]] = {
    "pytorch": _pytorch, "optimum": _optimum, "runtime": _runtime}


# --- online ----------------------------------------------------------------------------------

class Target:
    """How to send ``texts`` to the service in one request and check the answer.

    Args:
        cfg: The benchmark's settings (URL, protocol, model name).
    """

    def __init__(self, cfg: BenchOnlineConfig) -> None:
        base = cfg.url.rstrip("/")
        self.protocol = cfg.protocol
        self.url = {"classify": f"{base}/classify", "rerank": f"{base}/rerank"}.get(
            cfg.protocol, f"{base}/v2/models/{cfg.model}/infer")
        self.hint = {"v2": " (check --model: the served model's name)",
                     "rerank": " (/rerank needs a text-pair model)"}.get(cfg.protocol, "")

    def body(self, texts: list[str]) -> dict[str, Any]:
        if self.protocol == "classify":
            return {"texts": texts}
        if self.protocol == "rerank":  # text-embeddings-inference's body: the first text queries the others
            return {"query": texts[0], "texts": texts[1:] or texts, "truncate": True}
        # Shape [n, 1]: what both deploykit's v2 route and a Triton model with dims [1] take.
        return {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}

    def valid(self, answer: Any, n: int) -> bool:
        """Whether a 200 answer holds one result per text."""
        if self.protocol == "classify":
            return isinstance(answer, list) and len(answer) == n
        if self.protocol == "rerank":
            return isinstance(answer, list) and len(answer) == max(n - 1, 1)
        outputs = {o.get("name"): o for o in (answer or {}).get("outputs", [])} if isinstance(answer, dict) else {}
        label = outputs.get("LABEL")
        return label is not None and label.get("shape", [0])[0] == n


class Online:
    """The classifier's load generator (see ``deploykit.bench.online.Online``): requests of
    ``--texts-per-request`` texts to ``/classify`` or the v2 route, by the shared load plan; with
    ``--protocol rerank``, text-embeddings-inference's ``/rerank`` of a text-pair model, the first
    text of each request the query and the others its documents (``--texts-per-request 33``: one
    query and 32 documents, the issue's rerank workload)."""

    kind = "online"

    def __init__(self, cfg: BenchOnlineConfig) -> None:
        self.cfg = cfg

    def texts(self) -> list[str]:
        """A seeded sample of ``--data``'s ``--text-column``."""
        cfg = self.cfg
        return sample_texts(cfg.data, cfg.text_column, cfg.samples, cfg.seed)

    async def levels(self, texts: list[str]) -> list[dict[str, Any]]:
        return await run_levels(self.cfg, texts, Target(self.cfg))

    def facts(self) -> dict[str, Any]:
        return {"model": self.cfg.model if self.cfg.protocol == "v2" else None}

    def write(self, out: Path, results: dict[str, Any]) -> None:
        report.write(out, results)
