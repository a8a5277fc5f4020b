"""token-classification's torch-free runtime: texts in, entities with character offsets out.

It is the classifier's runtime (``deploykit.tasks.classification.runtime.Runtime``: the artifact
verified by its manifest, the variant rule, one onnxruntime session, the length-sorted token-budget
batching plan and the padded feeds), with what differs for tokens:

- a text of any length is cut into windows of the manifest's ``max_length`` tokens that share its
  ``stride`` tokens (``deploykit.tasks.windows``: the chunks transformers' pipeline builds with
  ``stride``), and each window is one row of the batching plan, so the service's budgets, admission
  and 413 on too many tokens apply to windows as they apply to texts;
- a row's output is its tokens' logits [tokens, labels] (``run`` answers one array per row);
- ``entities`` aggregates them as the transformers token-classification pipeline does
  (``aggregation``: none, simple, first, average, max), with character offsets into the original
  text, each entity once even across window edges (the pipeline's merge rule).

Imports only numpy, onnxruntime, tokenizers and deploykit's serving side: never torch,
transformers or datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.errors import BadInputError
from deploykit.tasks.classification.runtime import Runtime as ClassifierRuntime
from deploykit.tasks.token_classification.aggregation import WordRule, entities
from deploykit.tasks.token_classification.head import AGGREGATIONS, TokenClassification
from deploykit.tasks.windows import Window, by_text, set_windows, windows


def default_stride(max_length: int) -> int:
    """The stride of a graph that is not an artifact's yet (export's INT8 search): a quarter window."""
    return max(0, min(32, max_length // 4))


class Runtime(ClassifierRuntime):
    """A token-classification artifact loaded for inference (the arguments are the classifier
    runtime's: ``artifact``, ``variant``, ``threads``, ``providers``, ``max_batch_tokens``,
    ``max_batch_size``, ``spin``; also ``of_variant`` and ``of_graph``).

    Attributes:
        stride: Tokens consecutive windows share (the manifest's).
        aggregation: The aggregation used when a call names none (the manifest's).

    Raises:
        BadInputError: As the classifier's runtime (not a token-classification artifact, a graph
            that contradicts the manifest, ...), or a stride that leaves a window no new tokens.
        IntegrityError: A file does not match the manifest.
    """

    HEAD = TokenClassification

    def _setup(self, model_file: Path, tokenizer_file: Path, **options: Any) -> None:
        super()._setup(model_file, tokenizer_file, **options)
        head = self.manifest.head_as(TokenClassification) if self.manifest else None
        self.stride = head.stride if head else default_stride(self.max_length)
        self.aggregation = head.aggregation if head else "first"
        try:
            set_windows(self.tokenizer, self.max_length, self.stride)
        except ValueError as exc:
            raise BadInputError(f"{self.path}: {exc}; re-export the artifact with another --stride") from None
        self.rule = WordRule.of(self.tokenizer)

    @classmethod
    def of_graph(cls, model_file: str | Path, tokenizer_file: str | Path, max_length: int, *,
                 threads: int | None = None, spin: bool = False, stride: int | None = None) -> Runtime:
        """A graph that is not (yet) an artifact's variant (the classifier runtime's ``of_graph``),
        windowed with ``stride`` (default: ``default_stride``).

        Raises:
            BadInputError: As the constructor.
        """
        runtime = super().of_graph(model_file, tokenizer_file, max_length, threads=threads, spin=spin)
        if stride is not None and stride != runtime.stride:
            try:
                set_windows(runtime.tokenizer, runtime.max_length, stride)
            except ValueError as exc:
                raise BadInputError(f"--stride: {exc}") from None
            runtime.stride = stride
        return runtime

    def probe_shape(self) -> tuple[int, ...]:
        """One row of ``max_length`` tokens answers logits per token, one per label."""
        return (1, self.max_length, len(self.labels))

    # --- tokens ------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[Window]:
        """Every window of every text (a text past ``max_length`` tokens has several).

        Raises:
            BadInputError: A text the tokenizer cannot take (not a string, a lone surrogate), by position.
        """
        return windows(self.encodings(texts), self.max_length, self.stride)

    def run(self, rows: Sequence[Window]) -> np.ndarray:
        """The logits of one batch of windows, as one model call.

        Returns:
            An object array with one float32 array [tokens, labels] per row.
        """
        out = np.empty(len(rows), dtype=object)
        if rows:
            (logits,) = self.session.run([self.output_name], self.feeds(rows))
            logits = np.asarray(logits, dtype=np.float32)
            for i, row in enumerate(rows):
                out[i] = logits[i, :row.length]
        return out

    def logits_of(self, rows: Sequence[Window]) -> np.ndarray:
        """The logits of windows of any number, batched by budget, in the rows' order (as ``run``)."""
        result = np.empty(len(rows), dtype=object)
        for batch in self.plan(rows):
            result[batch] = self.run([rows[i] for i in batch])
        return result

    # --- entities ----------------------------------------------------------------------------

    def check_aggregation(self, aggregation: str | None) -> str:
        """The aggregation to apply: ``aggregation``, else the manifest's default.

        Raises:
            BadInputError: An unknown one.
        """
        chosen = aggregation or self.aggregation
        if chosen not in AGGREGATIONS:
            raise BadInputError(f"unknown aggregation {chosen!r}; choose one of {', '.join(AGGREGATIONS)}")
        return chosen

    def entities(self, texts: Sequence[str], rows: Sequence[Window], logits: Sequence[np.ndarray],
                 aggregation: str | None = None) -> list[list[dict[str, Any]]]:
        """Each text's entities from its windows' logits.

        Args:
            texts: The texts ``rows`` were made from (``rows[i].text`` indexes them).
            rows: Their windows (``tokenize``).
            logits: Each window's logits (``run``/``logits_of``).
            aggregation: One of ``AGGREGATIONS`` (default: the manifest's).

        Returns:
            One list per text of the pipeline's dicts (``entity_group``, ``score``, ``word``,
            ``start``, ``end``; with ``none``: ``entity``, ``score``, ``index``, ``word``, ``start``,
            ``end``), ``word`` being the text's own slice.
        """
        strategy = self.check_aggregation(aggregation)
        groups = by_text(rows)
        out = []
        for i, text in enumerate(texts):
            index = groups.get(i, [])
            out.append(entities(text, [rows[j] for j in index], [logits[j] for j in index], strategy,
                                self.labels, self.rule))
        return out

    def predict(self, texts: Sequence[str], aggregation: str | None = None) -> list[list[dict[str, Any]]]:
        """The entities of ``texts`` (any number, any length), in the caller's order."""
        strategy = self.check_aggregation(aggregation)
        rows = self.tokenize(texts)
        return self.entities(texts, rows, self.logits_of(rows), strategy)
