"""question-answering's torch-free runtime: (question, context) pairs in, answers with character offsets
into the context out.

It is the classifier's runtime (``deploykit.tasks.classification.runtime.Runtime``: the artifact
verified by its manifest, the variant rule, one onnxruntime session, the length-sorted token-budget
batching plan and the padded feeds), with what differs for spans:

- a pair is encoded as the pipeline encodes it: the question whole in every window, the context cut
  into windows of the manifest's ``max_length`` tokens that share ``doc_stride`` tokens
  (``deploykit.tasks.windows``, ``pair=True``); each window is one row of the batching plan, so the
  service's budgets, admission and 413 on too many tokens apply to windows;
- a question longer than the head's ``max_question_len`` tokens, or than a window leaves room for, is
  refused by position (the pipeline would fail or cut it);
- a row's output is its start and end logits ([2, tokens]); ``answers`` reads them as the
  transformers question-answering pipeline does (``answers.decode``: n-best start/end search, word
  alignment, answers merged across windows, the empty answer), then applies the manifest's tuned
  null threshold, when it has one.

Imports only numpy, onnxruntime, tokenizers and deploykit's serving side: never torch, transformers
or datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.errors import BadInputError
from deploykit.tasks.classification.runtime import Runtime as ClassifierRuntime
from deploykit.tasks.question_answering import answers
from deploykit.tasks.question_answering.head import OUTPUTS, QuestionAnswering
from deploykit.tasks.token_classification.runtime import Runtime as TokenRuntime
from deploykit.tasks.windows import Window, by_text, set_windows

MAX_TOP_K = 20  # the most answers one question may ask for


class PairError(BadInputError):
    """A (question, context) pair the model cannot take, by its position in the call (``index``), so a
    caller that knows where the pairs came from (``predict``: the file rows) can name it.

    Attributes:
        index: The pair's position in the call.
        problem: What is wrong with it, after "question N".
    """

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"question {index} {problem}")
        self.index, self.problem = index, problem


class Runtime(ClassifierRuntime):
    """A question-answering artifact loaded for inference (the arguments are the classifier runtime's:
    ``artifact``, ``variant``, ``threads``, ``providers``, ``max_batch_tokens``, ``max_batch_size``,
    ``spin``; also ``of_variant`` and ``of_graph``).

    Attributes:
        head: The manifest's question-answering fields (a default head for ``of_graph``).
        cls_id: The token a window starts with ([CLS]), where a model points for "no answer".

    Raises:
        BadInputError: As the classifier's runtime, or a stride that leaves a window no new tokens.
        IntegrityError: A file does not match the manifest.
    """

    HEAD = QuestionAnswering
    GRAPH_OUTPUT = OUTPUTS[0]

    def _setup(self, model_file: Path, tokenizer_file: Path, **options: Any) -> None:
        super()._setup(model_file, tokenizer_file, **options)
        self.head = self.manifest.head_as(QuestionAnswering) if self.manifest else QuestionAnswering(
            doc_stride=min(32, self.max_length // 4))
        # Questions are measured without truncation (the pair tokenizer refuses a lone sequence).
        self.questions = type(self.tokenizer).from_str(self.tokenizer.to_str())
        self.questions.no_truncation()
        try:
            set_windows(self.tokenizer, self.max_length, self.head.doc_stride, pair=True)
        except ValueError as exc:
            raise BadInputError(f"{self.path}: {exc}; re-export the artifact with another --doc-stride") from None
        self.specials = self.tokenizer.num_special_tokens_to_add(True)
        probe = self.questions.encode("a", "b")
        self.cls_id = probe.ids[0] if probe.special_tokens_mask[0] else None

    @classmethod
    def of_graph(cls, model_file: str | Path, tokenizer_file: str | Path, max_length: int, *,
                 threads: int | None = None, spin: bool = False, stride: int | None = None,
                 head: QuestionAnswering | None = None) -> Runtime:
        """A graph that is not (yet) an artifact's variant (the classifier runtime's ``of_graph``), with
        ``head`` (the export's: its stride, answer rules and question limit), else a default head whose
        windows share ``stride`` tokens (default: a quarter window, at most 32).

        Raises:
            BadInputError: As the constructor.
        """
        runtime = super().of_graph(model_file, tokenizer_file, max_length, threads=threads, spin=spin)
        if head is None and stride is not None:
            head = QuestionAnswering(doc_stride=stride)
        if head is not None:
            try:
                set_windows(runtime.tokenizer, runtime.max_length, head.doc_stride, pair=True)
            except ValueError as exc:
                raise BadInputError(f"--doc-stride: {exc}") from None
            runtime.head = head
        return runtime

    def probe_shape(self) -> tuple[int, ...]:
        """One row of ``max_length`` tokens answers a start logit per token."""
        return (1, self.max_length)

    @property
    def question_limit(self) -> int:
        """The most question tokens served: the head's ``max_question_len``, within what a window leaves
        beside the special tokens, the stride and one new context token."""
        return answers.question_limit(self.head.max_question_len, self.max_length, self.head.doc_stride, self.specials)

    # --- tokens ------------------------------------------------------------------------------

    def tokenize(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Window]:
        """Every window of every (question, context) pair (a long context has several).

        Raises:
            BadInputError: A question or context that is not text, is empty, cannot be tokenized, or a
                question longer than ``question_limit`` tokens (by position).
        """
        if len(questions) != len(contexts):
            raise BadInputError(f"{len(questions)} questions but {len(contexts)} contexts; give one context per question")
        for i, (question, context) in enumerate(zip(questions, contexts)):
            for name, value in (("question", question), ("context", context)):
                if not isinstance(value, str) or not value.strip():
                    raise PairError(i, f"has its {name} empty or not text; send a non-empty string")
        try:
            counts = [len(e.ids) for e in self.questions.encode_batch(list(questions), add_special_tokens=False)]
        except Exception:  # tokenizers says not which text
            counts = []
            for i, text in enumerate(questions):
                try:
                    counts.append(len(self.questions.encode(text, add_special_tokens=False).ids))
                except Exception as exc:
                    raise PairError(i, f"cannot be tokenized ({exc}); send valid Unicode strings") from None
        limit = self.question_limit
        for i, count in enumerate(counts):
            if count > limit:
                raise PairError(i, f"has {count} tokens; this model answers questions of at most {limit} tokens "
                                   f"(max_question_len {self.head.max_question_len}, windows of {self.max_length}); "
                                   "shorten it")
        try:
            return answers.pair_windows(self.tokenizer, questions, contexts, self.max_length, self.head.doc_stride)
        except Exception:
            for i, context in enumerate(contexts):
                try:
                    self.questions.encode(context)
                except Exception as exc:
                    raise PairError(i, f"has a context that cannot be tokenized ({exc}); send valid Unicode "
                                       "strings") from None
            raise

    def run(self, rows: Sequence[Window]) -> np.ndarray:
        """The start and end logits of one batch of windows, as one model call.

        Returns:
            An object array with one float32 array [2, tokens] (start, end) per row.
        """
        out = np.empty(len(rows), dtype=object)
        if rows:
            starts, ends = self.session.run(list(self.head.outputs), self.feeds(rows))
            for i, row in enumerate(rows):
                out[i] = np.stack([starts[i, :row.length], ends[i, :row.length]]).astype(np.float32, copy=False)
        return out

    # The logits of windows of any number, batched by budget, in the rows' order (as ``run``): the
    # token classifier's, which batches windows of any span task.
    logits_of = TokenRuntime.logits_of

    # --- answers -----------------------------------------------------------------------------

    def rules(self, top_k: int = 1, handle_impossible_answer: bool | None = None) -> answers.Rules:
        """The answer rules of a call: the head's, with ``top_k`` and (if given) the empty answer's rule.

        Raises:
            BadInputError: ``top_k`` outside 1..``MAX_TOP_K``.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise BadInputError(f"top_k is {top_k!r}; ask for 1 to {MAX_TOP_K} answers")
        impossible = self.head.handle_impossible_answer if handle_impossible_answer is None else handle_impossible_answer
        return answers.Rules(top_k, self.head.max_answer_len, self.head.align_to_words, impossible)

    def decoded(self, contexts: Sequence[str], rows: Sequence[Window], logits: Sequence[np.ndarray],
                rules: answers.Rules | Sequence[answers.Rules]) -> list[answers.Decoded]:
        """Each question's answers as the pipeline ranks them, from its windows' logits, under one rule set
        for all, or each question's own (its top_k: the pipeline's n-best, hence its scores, depend on it)."""
        groups = by_text(rows)
        each = [rules] * len(contexts) if isinstance(rules, answers.Rules) else rules
        return [answers.decode(context, [rows[j] for j in groups.get(i, [])], [logits[j][0] for j in groups.get(i, [])],
                               [logits[j][1] for j in groups.get(i, [])], each[i], self.cls_id)
                for i, context in enumerate(contexts)]

    def answers(self, contexts: Sequence[str], rows: Sequence[Window], logits: Sequence[np.ndarray],
                top_k: int | Sequence[int] = 1, threshold: bool = True) -> list[list[dict[str, Any]]]:
        """The served answers of each question (``answer``, ``score``, ``start``, ``end``; best first).

        Args:
            contexts: The contexts ``rows`` were cut from.
            rows: Their windows (``tokenize``).
            logits: Each window's logits (``run``/``logits_of``).
            top_k: Answers per question: one for all, or each question's own (each decoded with its own,
                as it would be alone).
            threshold: Apply the manifest's tuned null threshold (when it has one); False gives the
                pipeline's own ranking.

        Raises:
            BadInputError: A ``top_k`` outside 1..``MAX_TOP_K``.
        """
        tuned = self.head.null_threshold if threshold else None
        ks = [top_k] * len(contexts) if isinstance(top_k, int) else list(top_k)
        # With a tuned threshold the empty answer is placed by it, not ranked by the pipeline's rule.
        rules = {k: self.rules(k, False if tuned is not None else None) for k in set(ks)}
        decoded = self.decoded(contexts, rows, logits, [rules[k] for k in ks])
        return [answers.with_threshold(d, tuned, k) for d, k in zip(decoded, ks)]

    def predict(self, questions: Sequence[str], contexts: Sequence[str], top_k: int = 1) -> list[list[dict[str, Any]]]:
        """The answers of (question, context) pairs (any number, any length), in the caller's order."""
        self.rules(top_k)
        rows = self.tokenize(questions, contexts)
        return self.answers(contexts, rows, self.logits_of(rows), top_k)
