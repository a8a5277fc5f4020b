"""The options text-classification adds to the stage configs, and their checks.

``OPTIONS`` maps a config class of ``deploykit.config`` to the dataclass whose fields that config
gains (flags, YAML keys and help come from them); a class's ``validate`` checks its ranges. An
option another task does not declare is refused there when set (``config.check_task``).
Imports only the option helpers: ``deploykit.config`` imports this module while it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploykit.options import int_list, opt, require, require_int_list

# Static INT8 schemes (``deploykit.tasks.classification.int8`` checks this list against its own).
INT8_SCHEMES = ("auto", "static-minmax", "static-entropy", "static-minmax-fallback", "static-entropy-fallback")


# --problem-type: one label per text (softmax), any number (per-label sigmoid and thresholds), one
# relevance score in [0, 1] (one logit, BCE, sigmoid: a reranker), or a similarity (one logit, MSE).
PROBLEM_TYPES = ("single-label", "multi-label", "relevance", "regression")
SCORE_PROBLEMS = ("relevance", "regression")  # one logit, a number per row (not labels)
TRUNCATIONS = ("longest_first", "only_second")


@dataclass
class Data:
    label_column: str = opt("label", "Name of the column that holds the label "
                            "(the built-in 'tweets' data uses its own 'sentiment' column).")
    problem_type: str = opt("single-label", "text-classification: single-label (one label per text, "
                            "softmax) or multi-label (any number of labels per text, even none: a list in "
                            "the label column, or a string split on --label-separator; per-label sigmoid "
                            "and thresholds).", choices=PROBLEM_TYPES)
    label_separator: str = opt(",", "text-classification, multi-label: what separates the labels of a "
                               "label cell that is a string (a JSON/Parquet list needs none).")
    min_labels: int = opt(0, "text-classification, multi-label: the fewest labels a row may have. 0 (the "
                          "default) allows a text with no label; 1 says the label set forbids an empty "
                          "list, so such a row is an error naming it (or skipped with --skip-bad-rows).")
    text_pair_column: str | None = opt(None, "text-classification: a second text column; each row's two "
                                       "texts are encoded together as a pair (query and document, two "
                                       "sentences, claim and evidence).")
    truncation: str = opt("longest_first", "text-classification pairs: how a pair longer than --max-length "
                          "is cut: longest_first (the longer text loses tokens first) or only_second (the "
                          "query is kept whole).", choices=TRUNCATIONS)
    skip_bad_rows: bool = opt(False, "Skip rows that cannot be used (token-classification: overlapping "
                              "spans, a span outside the text, tags and tokens of different lengths; "
                              "multi-label: a held-out row with a label the training split lacks, or "
                              "fewer labels than --min-labels) and "
                              "log their count, instead of exit 2.")

    def validate(self) -> None:
        require(self.problem_type in PROBLEM_TYPES, "problem_type", f"choose one of {', '.join(PROBLEM_TYPES)}")
        require(bool(self.label_separator), "label_separator", "must be a non-empty string")
        require(self.min_labels >= 0, "min_labels", "must be 0 or more")
        require(self.min_labels <= 1 or self.problem_type == "multi-label", "min_labels",
                "above 1 needs --problem-type multi-label (a single-label row has exactly one label)")
        require(self.truncation in TRUNCATIONS, "truncation", f"choose one of {', '.join(TRUNCATIONS)}")


@dataclass
class Train:
    class_weights: str = opt("none", "Weight the loss by inverse class frequency (auto) or not; "
                             "multi-label: auto weighs each label's positives by its negatives/positives "
                             "(BCE's pos_weight).", choices=("none", "auto"))
    thresholds: str = opt("tuned", "multi-label: each label's probability threshold: tuned (the one that "
                          "maximises the label's F1 on the validation split, at every evaluation) or one "
                          "number for every label (e.g. 0.5); recorded in the checkpoint's config.json "
                          "and the artifact's manifest.")

    def validate(self) -> None:
        require(self.class_weights in ("none", "auto"), "class_weights", "choose none or auto")
        require(self.thresholds == "tuned" or _probability(self.thresholds), "thresholds",
                f"{self.thresholds!r} is neither 'tuned' nor a probability in (0, 1), e.g. 0.5")


def _probability(value: str) -> bool:
    try:
        return 0 < float(value) < 1
    except ValueError:
        return False


@dataclass
class HeldOut:
    label_column: str | None = opt(None, "Label column (default: the checkpoint's).")


@dataclass
class Parity:
    fp32_atol: float = opt(1e-4, "Largest absolute logit difference allowed for the fp32 and "
                           "fused (opt) variants.")
    int8_min_agreement: float = opt(0.99, "Smallest top-1 label agreement with PyTorch allowed "
                                    "for INT8 variants.")
    int8_max_f1_drop: float = opt(0.01, "Largest macro-F1 loss (0.01 = 1 point) allowed for INT8 "
                                  "variants against PyTorch.")
    int8_max_micro_f1_drop: float = opt(0.005, "multi-label: largest micro-F1 loss (0.005 = half a point) "
                                        "allowed for INT8 variants against PyTorch (their agreement is "
                                        "per label).")
    int8_max_ndcg_drop: float = opt(0.005, "relevance/regression with a query id (--group-column): largest "
                                    "NDCG@10 loss (0.005 = half a point) allowed for INT8 variants against "
                                    "PyTorch (their agreement is the Spearman correlation of the scores).")

    def validate(self) -> None:
        require(self.fp32_atol > 0, "fp32_atol", "must be positive")
        require(0 <= self.int8_max_ndcg_drop <= 1, "int8_max_ndcg_drop", "must be in [0, 1]")
        require(0 <= self.int8_min_agreement <= 1, "int8_min_agreement", "must be a fraction in [0, 1]")
        require(0 <= self.int8_max_f1_drop <= 1, "int8_max_f1_drop", "must be in [0, 1]")
        require(0 <= self.int8_max_micro_f1_drop <= 1, "int8_max_micro_f1_drop", "must be in [0, 1]")


@dataclass
class Export:
    int8_scheme: str = opt("auto", "Static INT8 scheme: auto (static-minmax, then static-entropy, then "
                           "the accuracy-aware fallback on the better of the two: the first that "
                           "meets the target bounds), or one scheme by name.", choices=INT8_SCHEMES)
    int8_target_f1_drop: float | None = opt(None, "Largest macro-F1 loss (0.005 = half a point) an INT8 "
                                            "scheme may show on validation rows to be chosen "
                                            "(default: half of --int8-max-f1-drop, the gate's bound).")
    int8_fallback: str = opt("auto", "auto: when the all-INT8 graphs miss the target bounds on "
                             "validation rows, keep the operators that quantize worst in float, "
                             "the fewest that meet them (measured, recorded in the manifest); "
                             "off: quantize every operator.", choices=("auto", "off"))
    int8_search_samples: int = opt(2000, "Validation rows the INT8 scheme choice and the fallback "
                                   "search score each candidate graph on.")
    int8_search_margin: float | None = opt(None, "How far above --int8-min-agreement the INT8 "
                                           "choice wants the expected agreement (a low-noise "
                                           "estimate) on validation rows, so that the held-out split "
                                           "passes too (default: two standard errors of the gate's "
                                           "count on the held-out rows, 0.0032 for 3,816 rows).")
    int8_float_ffn_layers: int = opt(0, "With --quantize dynamic: keep the feed-forward MatMuls of "
                                     "the first N transformer layers in float, instead of searching "
                                     "(0: let --int8-fallback decide).")
    calibration_samples: int = opt(512, "Training rows (the first N of the training split, never "
                                   "held-out ones) that calibrate static INT8.")
    reduce_range: str = opt("auto", "7-bit weights for INT8: auto (on when the CPU lacks VNNI), "
                            "on, off.", choices=("auto", "on", "off"))

    def validate(self) -> None:
        require(self.int8_scheme in INT8_SCHEMES, "int8_scheme", f"choose one of {', '.join(INT8_SCHEMES)}")
        require(self.int8_scheme == "auto" or self.quantize in ("auto", "static"), "int8_scheme",
                f"{self.int8_scheme} is a static scheme; it needs --quantize auto or static, not {self.quantize}")
        require(not self.int8_float_ffn_layers or self.quantize == "dynamic", "int8_float_ffn_layers",
                "applies to --quantize dynamic; static INT8 chooses its float operators with "
                "--int8-scheme static-minmax-fallback (or auto)")
        require(self.int8_target_f1_drop is None or 0 <= self.int8_target_f1_drop <= 1, "int8_target_f1_drop",
                "must be in [0, 1]")
        require(self.reduce_range in ("auto", "on", "off"), "reduce_range", "choose auto, on or off")
        require(self.calibration_samples > 0, "calibration_samples", "must be positive")
        require(self.int8_float_ffn_layers >= 0, "int8_float_ffn_layers", "must be >= 0")
        require(self.int8_fallback in ("auto", "off"), "int8_fallback", "choose auto or off")
        require(self.int8_search_samples > 0, "int8_search_samples", "must be a positive number of rows")
        require(self.int8_search_margin is None or 0 <= self.int8_search_margin < 1, "int8_search_margin",
                "must be a fraction in [0, 1)")


@dataclass
class BenchOffline:
    batch_sizes: str = opt("1,8,32,128", "Batch sizes for the data set's texts.")
    synthetic_lengths: str = opt("128,256", "Token lengths of the synthetic long inputs (empty: none).")
    synthetic_batch_sizes: str = opt("1,8,32", "Batch sizes for the synthetic long inputs (batch 128 "
                                     "of 256 tokens takes tens of seconds per call for PyTorch on 2 cores).")
    optimum_quantized_rows: int = opt(1000, "Validation rows that choose between Optimum's dynamic "
                                      "and static INT8 (label agreement with PyTorch).")

    def validate(self) -> None:
        require_int_list(self.batch_sizes, "batch_sizes")
        require_int_list(self.synthetic_lengths, "synthetic_lengths", allow_empty=True)
        require_int_list(self.synthetic_batch_sizes, "synthetic_batch_sizes")
        require(all(n >= 8 for n in int_list(self.synthetic_lengths)), "synthetic_lengths",
                "every length must be at least 8 tokens")
        require(self.optimum_quantized_rows > 0, "optimum_quantized_rows", "must be positive")


@dataclass
class BenchOnline:
    model: str = opt("classifier", "Model name for --protocol v2.")
    rate: float | None = opt(None, "Also run an open-loop level at this many requests per second "
                             "(latency counted from each request's scheduled start).")
    single_requests: int = opt(50, "Sequential single requests timed after the heaviest level "
                               "(batching waits that stick after a burst show here).")
    texts_per_request: int = opt(1, "Texts in each request.")

    def validate(self) -> None:
        require(self.rate is None or self.rate > 0, "rate", "must be positive requests per second")
        require(self.single_requests >= 0, "single_requests", "must be >= 0")
        require(self.texts_per_request > 0, "texts_per_request", "must be positive")


@dataclass
class Service:
    rerank_label: str | None = opt(None, "text-classification pairs with class heads (NLI, paraphrase): the "
                                   "class whose probability /rerank and /v1/rerank rank by (a relevance "
                                   "head needs none).")


@dataclass
class Predict:
    text_pair_column: str | None = opt(None, "text-classification pairs: the column of each row's second text "
                                       "(a text-pair artifact needs it; the local engine).")


OPTIONS = {"ServiceConfig": Service, "DataConfig": Data, "TrainConfig": Train, "HeldOutConfig": HeldOut,
           "ParityConfig": Parity, "ExportConfig": Export, "BenchOfflineConfig": BenchOffline,
           "BenchOnlineConfig": BenchOnline, "PredictConfig": Predict}


def check(cfg: Any, stage: str) -> None:
    """The rules of a ``stage`` config (its class name) that runs text-classification: a relevance or
    regression head scores pairs (``--text-pair-column``); training ranks a score head's checkpoints
    by Spearman, not by the classes' default macro-F1."""
    if stage not in ("DataConfig", "TrainConfig"):
        return
    require(cfg.problem_type not in SCORE_PROBLEMS or cfg.text_pair_column, "problem_type",
            f"{cfg.problem_type} scores a pair of texts; give the second text with --text-pair-column")
    if stage == "TrainConfig" and cfg.problem_type in SCORE_PROBLEMS and cfg.metric in ("macro_f1", "accuracy",
                                                                                         "weighted_f1"):
        cfg.metric = "spearman"  # the task's default metric (macro_f1) means nothing for a score
