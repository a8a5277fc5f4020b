"""text-classification's torch-free runtime, shared by the service, the Triton backend and the benchmarks.

It reads an ``artifact/`` folder by its ``manifest.json`` alone: every listed file's size and
sha256 are checked before anything is loaded, the tokenizer is the ``tokenizers`` library's
``tokenizer.json``, and the model is one onnxruntime session. Large inputs are split into
batches by a token budget (as text-embeddings-inference does), rows are sorted by length so
that rows of similar length share a batch (less padding), and results come back in the
caller's order.

This module imports only numpy, onnxruntime, tokenizers, the standard library and deploykit's
errors, manifest (the artifact contract it reads), session and the task's head; a test proves it
never pulls in torch, transformers or datasets. (``deploykit.runtime`` re-exports it: the import
path generated Triton models use.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from deploykit.errors import BadInputError
from deploykit.manifest import TOKENIZER, Manifest, device_of
from deploykit.session import malloc_trim, session
from deploykit.tasks.classification.decisions import Decisions, softmax  # noqa: F401 - softmax: public here
from deploykit.tasks.classification.head import Classification

log = logging.getLogger(__name__)

# Tokens that are padding in the tokenizers we export (BERT, RoBERTa/XLM-R, DeBERTa); only
# used when tokenizer.json carries no padding configuration of its own.
_PAD_TOKENS = ("[PAD]", "<pad>")
_ORT_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass
class Encoded:
    """One tokenized text: ids, type ids and whether truncation cut it."""

    ids: list[int]
    type_ids: list[int]
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.ids)


class Runtime:
    """An artifact loaded for inference: verified files, a tokenizer and one onnxruntime session.

    The variant is the one ``Manifest.pick`` chooses for ``variant`` on the device that
    ``providers`` put the model on (``deploykit.manifest.device_of``).

    Args:
        artifact: The artifact folder.
        variant: The variant to serve (default: the manifest's ``default_variant`` on CPU, the
            fused fp32 one on a GPU).
        threads: onnxruntime intra-op threads (default: ``available_cpus()``, which honours
            container CPU limits).
        providers: Execution providers in order of preference (default: CPU). Asking for one
            that this onnxruntime build lacks is an error rather than a silent CPU fallback.
        max_batch_tokens: Token budget of one model call (rows x padded length).
        max_batch_size: Most rows in one model call.
        spin: Let idle intra-op threads busy-wait for the next call (onnxruntime's own default).
            For a single caller that calls back to back (``predict``, ``bench offline``): it saves
            waking the threads on every call, which made batch-1 latency 0.85x Optimum's on the
            same file. Off by default: the server calls from its batcher thread beside the event
            loop and the tokenizer, which spinning threads starve (see ``session``).

    Raises:
        BadInputError: Not an artifact (or not a text-classification one), unknown or
            unservable variant, unavailable provider, a non-positive budget, or a graph whose
            inputs or output contradict the manifest, or that fails on a row of ``max_length``
            tokens (the manifest's ``max_length`` is more than the model takes).
        IntegrityError: A file does not match the manifest.
    """

    # The manifest head this runtime serves (a subclass serving another task's artifacts names its own).
    HEAD: ClassVar[type] = Classification
    # The output a graph that is not an artifact's yet (``of_graph``) is read by.
    GRAPH_OUTPUT: ClassVar[str] = "logits"

    def __init__(self, artifact: str | Path, variant: str | None = None, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, max_batch_tokens: int = 16384,
                 max_batch_size: int = 64, spin: bool = False) -> None:
        manifest = Manifest.verify(artifact)
        chosen = manifest.pick(variant, device_of(providers))
        self._setup(Path(artifact) / chosen.file, Path(artifact) / TOKENIZER, manifest=manifest,
                    variant=chosen.name, threads=threads, providers=providers,
                    max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size, spin=spin)
        self._probe()

    @classmethod
    def of_variant(cls, folder: str | Path, manifest: Manifest, variant: str, *,
                   threads: int | None = None) -> "Runtime":
        """One variant of a manifest in hand, loaded exactly as served but servable or not and
        without re-hashing the files: how parity judges every variant (export, before the
        manifest is written; verify, after it checked the files).

        Raises:
            BadInputError: As the constructor, for the graph and the tokenizer.
        """
        runtime = cls.__new__(cls)
        runtime._setup(Path(folder) / manifest.variants[variant].file, Path(folder) / TOKENIZER,
                       manifest=manifest, variant=variant, threads=threads)
        return runtime

    @classmethod
    def of_graph(cls, model_file: str | Path, tokenizer_file: str | Path, max_length: int, *,
                 threads: int | None = None, spin: bool = False) -> "Runtime":
        """A graph that is not (yet) a variant of an artifact, with the artifact's tokenizer:
        export's INT8 search scores its candidate graphs with this, as they would be served.

        Args:
            model_file: The ONNX graph (inputs: any of the encoder inputs; output ``logits``).
            tokenizer_file: The artifact's ``tokenizer.json``.
            max_length: Truncation length.
            threads: onnxruntime intra-op threads.
            spin: As the constructor's (benchmarks of candidate graphs are single callers).
        """
        runtime = cls.__new__(cls)
        runtime._setup(Path(model_file), Path(tokenizer_file), max_length=max_length, threads=threads, spin=spin)
        return runtime

    def _setup(self, model_file: Path, tokenizer_file: Path, *, manifest: Manifest | None = None,
               variant: str | None = None, max_length: int | None = None, threads: int | None = None,
               providers: Sequence[str] | None = None, max_batch_tokens: int = 16384,
               max_batch_size: int = 64, spin: bool = False) -> None:
        """Load the tokenizer and the session, and check the graph against the manifest."""
        import onnxruntime as ort

        if max_batch_size < 1 or max_batch_tokens < 1:
            raise BadInputError("max_batch_size and max_batch_tokens must be positive "
                                "(DEPLOYKIT_MAX_BATCH_SIZE / DEPLOYKIT_MAX_BATCH_TOKENS)")
        self.manifest = manifest
        self.path = model_file.parent
        self.variant: str = variant or model_file.name
        self.name: str = manifest.name if manifest else model_file.stem
        head = manifest.head_as(self.HEAD) if manifest else None
        self.head = head  # the manifest's head (None for a graph without a manifest)
        self.labels: list[str] = list(head.labels) if head else []
        self.output_name: str = head.output if head else self.GRAPH_OUTPUT
        self.max_length: int = manifest.max_length if manifest else int(max_length)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_size = int(max_batch_size)
        # A row longer than the token budget must still fit in a batch of one.
        self.max_batch_tokens = max(self.max_batch_tokens, self.max_length)
        self.tokenizer = self._load_tokenizer(tokenizer_file)
        # Copies cutting another way (``_cutting``): by (direction, strategy), the served one included.
        self._tokenizers: dict[tuple[str, str], Any] = {("right", self._strategy): self.tokenizer}

        self.spin = bool(spin)
        self.session = session(model_file, manifest, threads=threads, providers=providers, spin=spin)
        self._shrink_arena = ort.RunOptions()
        self._shrink_arena.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.probe_seconds_per_token: float | None = None
        graph_inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names: list[str] = list(manifest.inputs) if manifest else list(graph_inputs)
        if set(graph_inputs) != set(self.input_names):
            raise BadInputError(f"{model_file} takes inputs {sorted(graph_inputs)} but the manifest's "
                                f"'inputs' lists {self.input_names}; re-export the artifact")
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if self.output_name not in outputs:
            raise BadInputError(f"{model_file} has outputs {sorted(outputs)}, not the manifest's "
                                f"'output' {self.output_name!r}; re-export the artifact")
        width = (outputs[self.output_name] or [None])[-1]
        if not manifest and isinstance(width, int):  # of_graph: the logits' columns by number
            self.labels = [str(i) for i in range(width)]
        # What the logits mean: softmax and the top label, or sigmoid and per-label thresholds.
        self.decisions = Decisions.of(head, self.labels)
        # Rows are pairs of texts (another task's head on this runtime never is).
        self.text_pair = isinstance(head, Classification) and head.text_pair
        if self.labels and isinstance(width, int) and width != len(self.labels):
            raise BadInputError(f"{model_file} gives {width} logits per text but the manifest's "
                                f"'labels' lists {len(self.labels)}; re-export the artifact")
        self._dtypes = {n: _ORT_INT_TYPES.get(graph_inputs[n].type, np.int64) for n in self.input_names}
        # Export's INT8 search loads dozens of candidate graphs: only artifact variants are news.
        log.log(logging.INFO if manifest else logging.DEBUG, "loaded %s variant %s (%s) with %s", self.name,
                self.variant, model_file.name, self.session.get_providers())

    def _load_tokenizer(self, tokenizer_file: Path) -> Any:
        """``tokenizer.json`` set up as served: truncation at ``max_length``, padding done per batch
        by ``feeds`` (to the batch's longest row, never to max_length) with the tokenizer's pad id."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        padding = tokenizer.padding
        if padding:
            self.pad_id = int(padding["pad_id"])
        else:
            ids = [tokenizer.token_to_id(t) for t in _PAD_TOKENS]
            self.pad_id = next((i for i in ids if i is not None), 0)
        # A pair's cut (longest_first, only_second) is the one export wrote into the file.
        self._strategy = (tokenizer.truncation or {}).get("strategy", "longest_first")
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length, strategy=self._strategy)
        return tokenizer

    def _probe(self) -> None:
        """Run the graph once on a row of ``max_length`` tokens, before anything is served.

        The file checks prove the graph is the one export wrote, not that the manifest's numbers
        fit it: a ``max_length`` beyond the model's position embeddings, or an output of another
        width than ``labels``, would otherwise fail (or answer wrongly) on the first long request.
        The second call's time per token seeds the service's admission estimate
        (``probe_seconds_per_token``); the first one pays onnxruntime's one-off allocations.

        Raises:
            BadInputError: The graph fails on, or answers in another shape for, such a row.
        """
        import onnxruntime as ort

        row = Encoded([self.pad_id] * self.max_length, [0] * self.max_length, False)
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported below, with what to do
        seconds = 0.0
        for _ in range(2):
            start = time.perf_counter()
            try:
                (out,) = self.session.run([self.output_name], self.feeds([row]), quiet)
            except Exception as exc:  # onnxruntime raises its own (Fail, InvalidArgument, ...)
                raise BadInputError(f"{self.path}: variant {self.variant} fails on a row of 'max_length' "
                                    f"{self.max_length} tokens ({str(exc).splitlines()[0][:300]}); the "
                                    "manifest's 'max_length' is more than this model takes: re-export "
                                    "the artifact with a smaller --max-length") from None
            seconds = time.perf_counter() - start
        if out.shape != self.probe_shape():
            raise BadInputError(f"{self.path}: variant {self.variant} answers {out.shape[-1]} logits per "
                                f"text but the manifest's 'labels' lists {len(self.labels)}; re-export the "
                                "artifact")
        self.probe_seconds_per_token = seconds / self.max_length

    def probe_shape(self) -> tuple[int, ...]:
        """The output's shape for one row of ``max_length`` tokens: a row of logits, one per label."""
        return (1, len(self.labels))

    # --- tokenization ----------------------------------------------------------------------

    def tokenize(self, texts: Sequence[Any], direction: str = "right") -> list[Encoded]:
        """Tokenize (truncating to ``max_length``) without padding.

        Args:
            texts: The texts, or (text, text_pair) tuples for a pair model (both encoded together,
                the second with segment ids 1, cut as ``tokenizer.json``'s truncation strategy says).

            direction: Which end a long text loses tokens from: ``right`` (the served default) or
                ``left`` (text-embeddings-inference's ``truncation_direction``).

        Returns:
            One ``Encoded`` per text, in order.

        Raises:
            BadInputError: As ``encodings``.
        """
        return [Encoded(e.ids, e.type_ids, bool(e.overflowing)) for e in self.encodings(texts, direction)]

    def encodings(self, texts: Sequence[Any], direction: str = "right") -> list[Any]:
        """The tokenizer's encodings of ``texts``, as its set-up says (truncation, no padding).

        A pair whose first text alone is longer than ``max_length`` cannot be cut ``only_second``;
        it is cut ``longest_first`` instead (the query loses tokens too), as a served request must
        get an answer.

        Raises:
            BadInputError: A text the tokenizer cannot take (not a string, or a string with a
                lone surrogate such as ``"\\ud800"``, which is not Unicode text); the message
                names its position.
        """
        tokenizer = self._cutting(direction)
        try:
            return tokenizer.encode_batch(list(texts))
        except Exception:  # tokenizers raises TypeError/Exception without saying which text
            out = []
            for i, text in enumerate(texts):
                try:
                    out.append(tokenizer.encode(*text) if isinstance(text, tuple) else tokenizer.encode(text))
                    continue
                except Exception as exc:
                    problem = exc
                if isinstance(text, tuple) and self._strategy == "only_second":
                    try:
                        out.append(self._cutting(direction, "longest_first").encode(*text))
                        continue
                    except Exception as exc:
                        problem = exc
                raise BadInputError(f"text {i} cannot be tokenized ({problem}); send valid Unicode "
                                    "strings (no lone surrogates)") from None
            return out

    def _cutting(self, direction: str = "right", strategy: str | None = None) -> Any:
        """The tokenizer cutting from ``direction`` by ``strategy`` (default: the file's); the
        served one, or a copy made on first use."""
        strategy = strategy or self._strategy
        key = (direction, strategy)
        if key not in self._tokenizers:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(self.tokenizer.to_str())
            copy.enable_truncation(self.max_length, strategy=strategy, direction=direction)
            self._tokenizers[key] = copy
        return self._tokenizers[key]

    def feeds(self, rows: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Pad encoded rows to the longest one and build the model's input arrays."""
        width = max((r.length for r in rows), default=0)
        n = len(rows)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :row.length] = row.ids
            mask[i, :row.length] = 1
            types[i, :row.length] = row.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name].astype(self._dtypes[name], copy=False) for name in self.input_names}

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The padded numpy feeds of ``texts`` as one batch (keys: the manifest's ``inputs``)."""
        return self.feeds(self.tokenize(texts))

    # --- inference -------------------------------------------------------------------------

    # Fixed cost of one model call, in padded tokens, for ``plan``'s trade-off between padding
    # and more calls. Measured (benchmarks/padding_plan.py, MiniLM INT8, 2 cores): one call of
    # ~33 tokens costs about what 30-40 extra tokens in a larger call cost.
    CALL_COST_TOKENS = 32

    def plan(self, rows: Sequence[Encoded]) -> Iterator[list[int]]:
        """Split rows into batches by token budget and size, longest first, padding little.

        Rows are sorted by length and cut into consecutive groups that minimise the padded
        tokens computed (rows x the group's longest row) plus ``CALL_COST_TOKENS`` per call,
        within ``max_batch_size`` and ``max_batch_tokens`` (dynamic programming over the sorted
        lengths, O(rows x max_batch_size)). On CPU the model is compute-bound even at batch 1,
        so padding is what batching costs: cutting only by the budgets padded 64 random tweets
        (mean 33 tokens) to their longest and ran 2-4x slower per text than these groups
        (benchmarks/padding_plan.py, docs/benchmarks.md).

        Yields:
            Lists of row indices, one list per model call, each longest row first.
        """
        order = sorted(range(len(rows)), key=lambda i: rows[i].length, reverse=True)
        lengths = [rows[i].length for i in order]
        n = len(order)
        # best[j]: cheapest cost of the first j sorted rows; cut[j]: where its last group starts.
        best = [0.0] + [float("inf")] * n
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(j - 1, max(0, j - self.max_batch_size) - 1, -1):
                width = lengths[i]  # sorted longest first: a group's first row is its widest
                if j - i > 1 and (j - i) * width > self.max_batch_tokens:
                    break  # wider groups (smaller i) only grow
                cost = best[i] + (j - i) * width + self.CALL_COST_TOKENS
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        groups = []
        j = n
        while j > 0:
            groups.append(order[cut[j]:j])
            j = cut[j]
        yield from reversed(groups)

    def run(self, rows: Sequence[Encoded]) -> np.ndarray:
        """Logits of one batch of encoded rows, as a single model call.

        Returns:
            float32 array [len(rows), num_labels].
        """
        if not rows:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        (out,) = self.session.run([self.output_name], self.feeds(rows))
        return np.asarray(out, dtype=np.float32)

    def release_memory(self) -> None:
        """Hand the memory of past big calls back to the system (a server calls this when idle).

        onnxruntime's CPU arena keeps its largest size (it only shrinks at the end of a call
        run with the shrinkage option: a one-row call here), and glibc keeps freed heap memory
        (the tokenizer's, numpy's) in its arenas (``malloc_trim``). Measured on MiniLM INT8: 256
        texts of 15 KB tokenized and run took RSS from 207 to 554 MiB; this brings it back to
        203 MiB (docs/serving.md).
        """
        (self.session.run([self.output_name], self.feeds([Encoded([self.pad_id], [0], False)]),
                          self._shrink_arena))
        malloc_trim()

    def logits_of(self, rows: Sequence[Encoded]) -> np.ndarray:
        """Logits of encoded rows of any number, batched by budget, in the rows' order."""
        result = np.zeros((len(rows), len(self.labels)), dtype=np.float32)
        for batch in self.plan(rows):
            result[batch] = self.run([rows[i] for i in batch])
        return result

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits of ``texts``: float32 [n, num_labels], in the caller's order."""
        return self.logits_of(self.tokenize(texts))

    def results(self, logits: np.ndarray, rows: Sequence[Encoded]) -> list[dict[str, Any]]:
        """Turn logits into answers by the head's rule (``Decisions.results``): single-label
        ``{"label", "score", "scores", "truncated"}``, multi-label ``{"labels", "scores", "truncated"}``."""
        return self.decisions.results(logits, [row.truncated for row in rows])

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Classify texts.

        Args:
            texts: The texts (any number; split into batches by the token budget).

        Returns:
            One answer per text, in the caller's order: ``{"label": str, "score": float, "scores":
            {label: float}, "truncated": bool}``, or for a multi-label head ``{"labels": [str],
            "scores": {label: float}, "truncated": bool}``.
        """
        rows = self.tokenize(texts)
        return self.results(self.logits_of(rows), rows)
