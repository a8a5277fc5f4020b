"""The options token-classification adds to the stage configs, and their checks.

``OPTIONS`` maps a config class of ``deploykit.config`` to the dataclass whose fields that config
gains (flags, YAML keys and help come from them). The INT8 options it shares with
text-classification (``--int8-scheme``, ``--int8-fallback``, ``--calibration-samples``, ...) are
declared with the same types and defaults, so one flag serves both tasks (its help is the
classifier's; for token classification the "labels" are the served entity sets). Imports only
the option helpers: ``deploykit.config`` imports this module while it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploykit.options import opt, require
from deploykit.tasks.classification.options import INT8_SCHEMES
from deploykit.tasks.token_classification.head import AGGREGATIONS, TAG_SCHEMES


@dataclass
class Data:
    tokens_column: str = opt("tokens", "token-classification, word-level data: the column of token lists "
                             "(a JSON list, or words separated by spaces, in a CSV cell).")
    tags_column: str = opt("ner_tags", "token-classification, word-level data: the column of tag lists, "
                           "one tag per token (strings, or ids with --tag-names or a saved data set's "
                           "ClassLabel names).")
    entities_column: str | None = opt(None, "token-classification, span-level data: the column of entities "
                                      "with character offsets into --text-column: [{start, end, label}], "
                                      "doccano's [[start, end, TYPE]] (its 'label' column) or Label Studio's "
                                      "export (its 'annotations' column; the text is under 'data'). The format "
                                      "is detected and logged. Without it the data is word-level.")
    tag_names: str | None = opt(None, "token-classification: the names of tag ids, comma-separated in id "
                                "order (e.g. O,B-PER,I-PER), for a tags column of integers.")
    tag_scheme: str = opt("iob2", "token-classification: the tags' scheme (converted to IOB2 inside).",
                          choices=TAG_SCHEMES)
    strict_tags: bool = opt(False, "token-classification: refuse (exit 2) an I- or E- tag that continues no "
                            "entity, or an unclosed BIOES entity, instead of starting one there (conlleval's "
                            "reading).")
    skip_bad_rows: bool = opt(False, "token-classification, question-answering: skip rows that cannot be used "
                              "(overlapping spans, a span outside the text or splitting a word, tags and tokens "
                              "of different lengths; an answer that is not the context's text at its start, an "
                              "empty question or context, ...) and record their count, instead of exit 2.")
    stride: int = opt(32, "token-classification: tokens that consecutive windows of a text longer than "
                      "--max-length share (training, evaluation, and the served default).")

    def validate(self) -> None:
        require(self.tag_scheme in TAG_SCHEMES, "tag_scheme", f"choose one of {', '.join(TAG_SCHEMES)}")
        require(self.stride >= 0, "stride", "must be >= 0 tokens")
        if self.tag_names is not None:
            names = [n.strip() for n in self.tag_names.split(",")]
            require(all(names) and len(set(names)) == len(names), "tag_names",
                    f"{self.tag_names!r} is not a comma-separated list of distinct tag names")


@dataclass
class Train:
    label_all_tokens: bool = opt(False, "token-classification: label every sub-token of a word (its "
                                 "continuations as I-), not only the first; the loss ignores the others by "
                                 "default.")


@dataclass
class HeldOut:
    tokens_column: str | None = opt(None, "token-classification: tokens column (default: the checkpoint's).")
    tags_column: str | None = opt(None, "token-classification: tags column (default: the checkpoint's).")
    entities_column: str | None = opt(None, "token-classification: entities column (default: the checkpoint's).")


def fp32_score_atol_option() -> Any:
    """``--fp32-score-atol``, the one option of both span tasks (token classification and question
    answering declare it alike, so the configs built from either see the same field)."""
    return opt(1e-4, "token-classification, question-answering: largest difference of an entity's or "
               "answer's score from the transformers pipeline's allowed for the fp32 and fused variants "
               "(which must find the very same entities or answers).")


@dataclass
class Parity:
    fp32_score_atol: float = fp32_score_atol_option()
    int8_min_span_agreement: float = opt(0.99, "token-classification: smallest share of sentences whose "
                                         "entity set (type, start, end) an INT8 variant must reproduce.")
    int8_max_entity_f1_drop: float = opt(0.005, "token-classification: largest entity-F1 loss (0.005 = half a "
                                         "point) allowed for INT8 variants against PyTorch.")
    long_texts: int = opt(8, "token-classification: texts of about three windows, made by joining held-out "
                          "sentences, that parity also checks (windows and their merge; 0: none).")

    def validate(self) -> None:
        require(self.fp32_score_atol > 0, "fp32_score_atol", "must be positive")
        require(0 <= self.int8_min_span_agreement <= 1, "int8_min_span_agreement", "must be a fraction in [0, 1]")
        require(0 <= self.int8_max_entity_f1_drop <= 1, "int8_max_entity_f1_drop", "must be in [0, 1]")
        require(self.long_texts >= 0, "long_texts", "must be >= 0")


@dataclass
class Export:
    aggregation: str = opt("first", "token-classification: the aggregation served when a request names none "
                           "(the transformers pipeline's strategies; first reads each word's label where "
                           "training put it).", choices=AGGREGATIONS)
    # Shared with text-classification (same types and defaults: one flag for both tasks).
    int8_scheme: str = opt("auto", "Static INT8 scheme.", choices=INT8_SCHEMES)
    int8_fallback: str = opt("auto", "Keep the worst-quantizing operators in float when needed.",
                             choices=("auto", "off"))
    int8_search_samples: int = opt(2000, "Validation rows the INT8 choice scores each candidate on.")
    int8_search_margin: float | None = opt(None, "Margin of the expected agreement above the gate.")
    calibration_samples: int = opt(512, "Training rows that calibrate static INT8.")
    reduce_range: str = opt("auto", "7-bit weights for INT8: auto, on, off.", choices=("auto", "on", "off"))

    def validate(self) -> None:
        require(self.aggregation in AGGREGATIONS, "aggregation", f"choose one of {', '.join(AGGREGATIONS)}")


@dataclass
class Eval:
    aggregation: str = opt("first", "token-classification: how the checkpoint's token labels become "
                           "entities (first: each word's first sub-token, where training put its label).",
                           choices=AGGREGATIONS)


@dataclass
class Predict:
    aggregation: str | None = opt(None, "token-classification: how tokens become entities (default: the "
                                  "manifest's).", choices=AGGREGATIONS)
    tokens_column: str | None = opt(None, "token-classification, word-level files: read this column of token "
                                    "lists (a list, or a CSV cell of JSON or space-separated words) instead "
                                    "of --text-column; the text is the tokens joined by single spaces, as "
                                    "training reads them, and the spans are offsets into it.")


@dataclass
class BenchOffline:
    batch_sizes: str = opt("1,8,32,128", "Batch sizes for the data set's texts.")
    bench_aggregation: str = opt("simple", "token-classification: the aggregation every engine applies "
                                 "(the pipeline's, deploykit's runtime's own).", choices=AGGREGATIONS)


@dataclass
class BenchOnline:
    # Shared with text-classification's request/response load generator (same types and defaults).
    model: str = opt("classifier", "Model name for --protocol v2.")
    rate: float | None = opt(None, "Also run an open-loop level at this many requests per second.")
    single_requests: int = opt(50, "Sequential single requests timed after the heaviest level.")
    texts_per_request: int = opt(1, "Texts in each request.")


OPTIONS = {"DataConfig": Data, "TrainConfig": Train, "HeldOutConfig": HeldOut, "ParityConfig": Parity,
           "ExportConfig": Export, "EvalConfig": Eval, "PredictConfig": Predict, "BenchOfflineConfig": BenchOffline,
           "BenchOnlineConfig": BenchOnline}


def check(cfg: Any, stage: str) -> None:
    """The rules of a ``stage`` config (its class name) that runs token-classification: a window
    (``--max-length`` tokens, two of them special) must hold more than ``--stride`` tokens.

    Raises:
        ConfigError: Naming ``--stride``.
    """
    if hasattr(cfg, "stride") and hasattr(cfg, "max_length"):
        require(cfg.stride < cfg.max_length - 2, "stride",
                f"{cfg.stride} must leave each window of --max-length {cfg.max_length} new tokens "
                f"(at most {cfg.max_length - 3})")
