"""question-answering's benchmarks: questions in, answers out, engine against engine; and the online load
generator of ``/answer`` and the v2 protocol (QUESTION, CONTEXT -> ANSWER, SCORE, START, END).

A benchmark input is one question with its context, carried as the JSON pair ``[question, context]``
(``pair_text``: the stages pass texts), sampled from ``--data`` (SQuAD JSON, or a flat file with
``question`` and ``context`` columns).

Offline engines (each in its own process, ``deploykit.bench.engines``; every call takes a batch of questions
and returns their best answers, tokenization and windows included, as a user's code would):

- ``pytorch``: ``transformers.pipeline("question-answering")`` on the checkpoint, PyTorch eager, ``batch_size``
  = the cell's batch, with the artifact's rules (``doc_stride``, ``max_seq_len``, ``max_answer_len``, ...);
- ``optimum``: the same pipeline on Optimum's ``ORTModelForQuestionAnswering`` running the artifact's
  variant's file (the same INT8 file the runtime serves);
- ``runtime``: deploykit's ``Runtime.predict`` on one variant (pair windows, token-budget batches, the
  written-out answer search).

A cell is timed by the classifier's ``measure`` (latency percentiles, texts/s = questions/s, tokens/s).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploykit.bench import report
from deploykit.bench.online import run_levels
from deploykit.config import BenchOfflineConfig, BenchOnlineConfig, int_list
from deploykit.errors import BadInputError
from deploykit.manifest import Manifest
from deploykit.tasks.classification import bench as classification_bench
from deploykit.tasks.classification.bench import measure  # noqa: F401  (the engines' cell timer)
from deploykit.tasks.question_answering import parity
from deploykit.tasks.question_answering.head import QuestionAnswering
from deploykit.tasks.question_answering.predict import CONTEXT, QUESTION
from deploykit.tasks.question_answering.runtime import Runtime

log = logging.getLogger(__name__)

Call = Callable[[Sequence[str]], int]


def pair_text(question: Any, context: Any) -> str:
    """A row's question and context as the one text a scorer takes (a JSON pair).

    Raises:
        ValueError: A cell that is not text or is blank.
    """
    for name, value in ((QUESTION, question), (CONTEXT, context)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"has a blank or non-text {name} ({str(value)[:40]!r}); the service refuses those too")
    return json.dumps([question, context], ensure_ascii=False)


def sample_pairs(source: str, samples: int, seed: int) -> list[str]:
    """A seeded sample of a data set's questions with their contexts, as JSON pairs (its test split when
    it has one).

    Raises:
        BadInputError: Unreadable source, no question and context columns, or no usable row.
    """
    from deploykit.data import read_frames, require_columns
    from deploykit.tasks.question_answering.data import squad_frame

    squad = squad_frame(Path(source))
    frames, where = ({"all": squad}, source) if squad is not None else read_frames(source)
    frame = frames.get("test", next(iter(frames.values())))
    require_columns({"test": frame}, where, {"question": QUESTION, "context": CONTEXT})
    pairs = []
    for question, context in zip(frame[QUESTION].tolist(), frame[CONTEXT].tolist()):
        try:
            pairs.append(pair_text(question, context))
        except ValueError:
            continue
    if not pairs:
        raise BadInputError(f"{source} has no row with a question and a context; pick another --data")
    return random.Random(seed).sample(pairs, min(samples, len(pairs)))


def unpair(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Questions and contexts of JSON pairs (a plain text, such as the online stage's reachability probe,
    is asked of itself)."""
    pairs = [json.loads(t) if t.startswith('["') else [t, t] for t in texts]
    return [q for q, _ in pairs], [c for _, c in pairs]


class Offline:
    """The reader's offline benchmark (see ``deploykit.bench.offline.Offline``)."""

    kind = "offline"
    ratio = ("texts_per_s", "throughput_vs_pytorch")

    def __init__(self, cfg: BenchOfflineConfig, manifest: Manifest) -> None:
        self.cfg, self.manifest = cfg, manifest
        self.head = manifest.head_as(QuestionAnswering)
        self.max_length = manifest.max_length
        self.max_batch = max(int_list(cfg.batch_sizes))

    def input_sets(self) -> dict[str, dict[str, Any]]:
        """The data set's questions and contexts (their real lengths; long contexts are windowed by every engine)."""
        cfg = self.cfg
        texts = sample_pairs(cfg.data, cfg.samples, cfg.seed)
        tokenizer = classification_bench.untruncated_tokenizer(cfg.artifact)
        lengths = [len(e.ids) for e in tokenizer.encode_batch([tuple(json.loads(t)) for t in texts])]
        return {"data": {"texts": texts, "batch_sizes": int_list(cfg.batch_sizes),
                         "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths)}}

    def engine(self, engine: str, common: dict[str, Any], checkpoint: str | None, out: Path) -> dict[str, dict[str, Any]]:
        log.warning("engine %s is not offered for question-answering (pytorch, optimum, runtime are)", engine)
        return {}

    def spec(self) -> dict[str, Any]:
        return {"pipeline": parity.pipeline_kwargs(self.head, self.max_length, 1)}

    def message(self) -> dict[str, Any]:
        return {}

    def facts(self) -> dict[str, Any]:
        return {"rules": parity.pipeline_kwargs(self.head, self.max_length, 1)}

    def write(self, out: Path, results: dict[str, Any]) -> None:
        report.write(out, results)


def _pipeline_call(model: Any, spec: dict[str, Any]) -> Call:
    """A batch of questions through ``transformers.pipeline("question-answering")`` on ``model``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, pipeline

    if spec.get("checkpoint"):
        tokenizer = AutoTokenizer.from_pretrained(spec["checkpoint"])
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(spec["artifact"]) / "tokenizer.json"))
    pipe = pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    kwargs = spec["pipeline"]

    def call(texts: Sequence[str]) -> int:
        questions, contexts = unpair(texts)
        pipe(question=questions, context=contexts, batch_size=len(texts), **kwargs)
        return sum(len(c) for c in contexts)

    return call


def _pytorch(spec: dict[str, Any]) -> Call:
    import torch
    from transformers import AutoModelForQuestionAnswering

    torch.set_num_threads(spec["threads"])
    return _pipeline_call(AutoModelForQuestionAnswering.from_pretrained(spec["checkpoint"]).eval(), spec)


def _optimum(spec: dict[str, Any]) -> Call:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForQuestionAnswering

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]  # the same thread count as every other engine
    model = ORTModelForQuestionAnswering.from_pretrained(spec["artifact"], file_name=spec["file"],
                                                         provider="CPUExecutionProvider", session_options=options)
    return _pipeline_call(model, spec)


def _runtime(spec: dict[str, Any]) -> Call:
    # A single caller calling back to back: the runtime's single-caller setting (spin).
    runtime = Runtime(spec["artifact"], spec["variant"], threads=spec["threads"],
                      max_batch_size=spec["max_batch_size"], spin=True)

    def call(texts: Sequence[str]) -> int:
        questions, contexts = unpair(texts)
        runtime.predict(questions, contexts)
        return sum(len(c) for c in contexts)

    return call


ENGINES: dict[str, Callable[[dict[str, Any]], Call]] = {"pytorch": _pytorch, "optimum": _optimum, "runtime": _runtime}


# --- online ----------------------------------------------------------------------------------

class Target:
    """How to send questions to a question-answering service in one request and check the answer."""

    def __init__(self, cfg: BenchOnlineConfig) -> None:
        base = cfg.url.rstrip("/")
        self.protocol = cfg.protocol
        self.url = f"{base}/answer" if cfg.protocol == "answer" else f"{base}/v2/models/{cfg.model}/infer"
        self.hint = " (check --model: the served model's name)" if cfg.protocol == "answer-v2" else ""

    def body(self, texts: list[str]) -> Any:
        questions, contexts = unpair(texts)
        if self.protocol == "answer":
            return [{"question": q, "context": c} for q, c in zip(questions, contexts)]
        return {"inputs": [{"name": "QUESTION", "shape": [len(texts), 1], "datatype": "BYTES", "data": questions},
                           {"name": "CONTEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": contexts}]}

    def valid(self, answer: Any, n: int) -> bool:
        """Whether a 200 answer holds one answer per question."""
        if not isinstance(answer, dict):
            return False
        if self.protocol == "answer":
            return isinstance(answer.get("answers"), list) and len(answer["answers"]) == n
        outputs = {o.get("name"): o for o in answer.get("outputs", []) if isinstance(o, dict)}
        found = outputs.get("ANSWER")
        return found is not None and found.get("shape", [0])[0] == n


class Online(classification_bench.Online):
    """The reader's load generator (see ``deploykit.bench.online.Online``): the classifier's, sending
    ``--texts-per-request`` questions to ``/answer`` or the v2 route."""

    def texts(self) -> list[str]:
        """A seeded sample of ``--data``'s questions with their contexts (JSON pairs)."""
        return sample_pairs(self.cfg.data, self.cfg.samples, self.cfg.seed)

    async def levels(self, texts: list[str]) -> list[dict[str, Any]]:
        return await run_levels(self.cfg, texts, Target(self.cfg))

    def facts(self) -> dict[str, Any]:
        return {"model": self.cfg.model if self.cfg.protocol == "answer-v2" else None}
