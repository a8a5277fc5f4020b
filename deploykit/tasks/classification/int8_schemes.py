"""Which INT8 graph export serves: the fastest scheme that meets the target bounds.

Schemes, fastest first (the first two have the same operators, so the same speed):

- ``static-minmax``: static QDQ INT8 of every weight MatMul/Gemm, activation ranges from the
  calibration rows' minima and maxima;
- ``static-entropy``: the same graph with ranges that minimise the KL divergence of each
  activation's histogram (clips outliers; slower to calibrate);
- ``static-<method>-fallback``: the better of those two (by expected agreement) with the
  accuracy-aware fallback (``int8_fallback.search``): the fewest operators kept in float, from the
  same calibration (the ranges are computed once and reused by every try).

``choose`` tries them in that order on the validation rows and keeps the first that meets the
target bounds (``int8_fallback.Scorer``: expected and counted agreement, macro-F1 loss) and is
batch-independent (``parity.batch_independence`` within the variant rule's
``BATCH_INDEPENDENCE_ATOL``). Dynamic INT8 is not among them: its activation scales come from
the whole batch, so a text's answer moves with its batch mates (``--quantize dynamic`` still
writes it, and the variant rule does not serve it by default).

All static schemes quantize the plain (unfused) graph: on the fine-tuned MiniLM it gave the same
accuracy as the MultiHeadAttention-fused graph (the same MatMuls are quantized) at the same
speed within noise, measured back to back (docs/export.md), and it needs no fusion, no symbolic
shape inference and no contrib operators, so every architecture export handles gets it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from deploykit.export import quantize
from deploykit.export.quantize import Static
from deploykit.manifest import BATCH_INDEPENDENCE_ATOL
from deploykit.tasks.classification import int8_fallback, parity
from deploykit.tasks.classification.options import INT8_SCHEMES
from deploykit.tasks.classification.runtime import Runtime

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy")  # calibration methods in the order tried (MinMax calibrates fastest)
STATIC_SCHEMES = tuple(s for s in INT8_SCHEMES if s != "auto")  # --int8-scheme's named schemes
# Search rows whose batch independence each tried scheme is measured on (parity then measures the
# served variant on every held-out row).
SELECTION_BATCH_ROWS = 512


@dataclass
class Calibration:
    """The training rows static INT8 is calibrated on, as feeds, and what the manifest says of them."""

    feeds: list[dict[str, Any]]
    source: str
    split: str
    texts: list[str]
    text_column: str | None = None
    label_column: str | None = None

    def record(self) -> dict[str, Any]:
        """``{"data", "split", "rows", "batches", "rows_sha256", ...}``: the rows' hash is the sha256 of
        their texts (JSON list, in order), so a test can show that held-out rows never enter it."""
        digest = hashlib.sha256(json.dumps(self.texts, ensure_ascii=False).encode()).hexdigest()
        record = {"data": self.source, "split": self.split, "rows": len(self.texts), "batches": len(self.feeds),
                  "rows_sha256": digest, "padding": "none (rows grouped by token length)"}
        for key, value in (("text_column", self.text_column), ("label_column", self.label_column)):
            if value is not None:
                record[key] = value
        return record


def calibration(cfg: Any, train_cfg: Any, src: Path, tokenizer_file: Path, max_length: int) -> Calibration:
    """The first ``cfg.calibration_samples`` training rows (``parity.training_rows``: the
    checkpoint's source and split seed, never a held-out row) as unpadded calibration feeds,
    tokenized as served (the runtime's truncation and input dtypes).

    Args:
        cfg: Export options (data source, columns, ``calibration_samples``).
        train_cfg: The checkpoint's training config.
        src: The graph to calibrate (its inputs).
        tokenizer_file: The artifact's ``tokenizer.json``.
        max_length: Truncation length.
    """
    rows = parity.training_rows(cfg, train_cfg, cfg.calibration_samples)
    feeds = quantize.calibration_feeds(Runtime.of_graph(src, tokenizer_file, max_length), rows.texts)
    return Calibration(feeds, rows.source, rows.split, rows.texts, rows.text_column, rows.label_column)


def method_of(scheme: str) -> str:
    """The calibration method a static scheme name carries (``static-entropy-fallback`` -> entropy)."""
    return scheme.split("-")[1]


@dataclass
class _Tried:
    """One scheme's graph (in the scratch folder) and how it scored."""

    name: str
    path: Path
    info: dict[str, Any]
    trial: Any  # int8_fallback.Trial
    batch: dict[str, Any]

    @property
    def independent(self) -> bool:
        return self.batch["max_abs_diff"] <= BATCH_INDEPENDENCE_ATOL

    @property
    def passed(self) -> bool:
        return self.trial.passed and self.independent

    def why(self, scorer: Any) -> str:
        t = self.trial
        misses = []
        if t.expected_agreement < scorer.target:
            misses.append(f"expected agreement {t.expected_agreement:.4f} < {scorer.target:.4f}")
        if t.agreement < scorer.count_floor:
            misses.append(f"agreement {t.agreement:.4f} < {scorer.count_floor:.4f}")
        if t.macro_f1_drop > scorer.max_f1_drop:
            misses.append(f"macro-F1 drop {100 * t.macro_f1_drop:+.2f} pt > {100 * scorer.max_f1_drop:.2f}")
        if not self.independent:
            misses.append(f"batch-dependent (logits move by {self.batch['max_abs_diff']:.3g} > "
                          f"{BATCH_INDEPENDENCE_ATOL:g} with batch mates)")
        if misses:
            return "misses: " + "; ".join(misses)
        floats = len(self.info["float_nodes"])
        return (f"meets the bounds (agreement {t.agreement:.4f}, expected {t.expected_agreement:.4f}, macro-F1 "
                f"drop {100 * t.macro_f1_drop:+.2f} pt) with {floats} operator(s) kept float, batch-independent "
                f"(max |Δ| {self.batch['max_abs_diff']:.3g})")

    def record(self, scorer: Any) -> dict[str, Any]:
        return {"scheme": self.name, "agreement": self.trial.agreement,
                "expected_agreement": self.trial.expected_agreement, "macro_f1_drop": self.trial.macro_f1_drop,
                "batch_independence": self.batch, "float_nodes": len(self.info["float_nodes"]),
                "float_weight_ops": self.info["float_weight_ops"], "passed": self.passed, "why": self.why(scorer)}


def choose(src: Path, dst: Path, scheme: str, scorer: Any, calibration: Calibration, reduce_range: bool,
           scratch: Path, fallback: bool = True, keep_best: bool = False) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Try static INT8 schemes on the scorer's rows and write the chosen one to ``dst``.

    Args:
        src: The plain fp32 graph.
        dst: Where to write ``model.int8.onnx``.
        scheme: ``auto`` (the ladder: MinMax, Entropy, then the fallback on the better of the
            two) or one of ``STATIC_SCHEMES`` (that scheme alone).
        scorer: ``int8_fallback.Scorer`` on the validation rows (the target bounds).
        calibration: The training rows' feeds and record.
        reduce_range: 7-bit weights (CPUs without VNNI).
        scratch: A folder for candidate graphs and the calibration caches (the caller removes it).
        fallback: Whether the ladder may end with the fallback search (``--int8-fallback auto``).
        keep_best: When no scheme meets the bounds, write the most accurate one tried anyway
            (``--quantize static`` or an explicit scheme: parity judges it); otherwise write none.

    Returns:
        (the manifest's ``quantization`` entry of what was written, with the calibration set and
        the selection record under ``selection``, or None when nothing was written; the selection
        record: which scheme won and why, the target bounds and rows, and every tried scheme's
        agreement, macro-F1 loss, batch independence and float-weight operators; with the
        calibration set too when nothing was written, for the manifest's ``int8_selection``).
    """
    caches: dict[str, Path] = {m: scratch / f"calibration-{m}.json" for m in METHODS}
    tried: list[_Tried] = []

    def quantizer(method: str, name: str) -> Static:
        return Static(method, reduce_range, calibration.feeds, caches[method], scheme=name)

    def judge(name: str, path: Path, info: dict[str, Any], trial: Any) -> _Tried:
        batch = scorer.batch_independence(path, SELECTION_BATCH_ROWS)
        result = _Tried(name, path, info, trial, batch)
        tried.append(result)
        floats = ", ".join(f"{op} {n}" for op, n in info["float_weight_ops"].items()) or "none"
        log.info("int8 scheme %s: %s; operators with float weights: %s", name, result.why(scorer), floats)
        return result

    def all_int8(method: str) -> _Tried:
        q = quantizer(method, f"static-{method}")
        path = scratch / f"{q.scheme}.onnx"
        q.write(src, path)
        return judge(q.scheme, path, q.info(src, path, []), scorer.trial(path, 0, f"int8 scheme {q.scheme}"))

    def with_fallback(method: str, first: Any | None) -> _Tried:
        q = quantizer(method, f"static-{method}-fallback")
        path = scratch / f"{q.scheme}.onnx"
        info = int8_fallback.search(src, path, q, scorer, first=first)
        kept = len(info["float_nodes"])
        trial = next(t for t in info["fallback"]["trials"] if t["float_nodes"] == kept)
        return judge(q.scheme, path, info, int8_fallback.Trial(**trial))

    if scheme == "auto":
        winner = None
        for method in METHODS:
            result = all_int8(method)
            if result.passed:
                winner = result
                break
        if winner is None and fallback:
            best = max(tried, key=lambda t: t.trial.expected_agreement)
            result = with_fallback(method_of(best.name), best.trial)
            winner = result if result.passed else None
    elif scheme.endswith("-fallback"):
        result = with_fallback(method_of(scheme), None)
        winner = result if result.passed else None
    else:
        result = all_int8(method_of(scheme))
        winner = result if result.passed else None

    written = winner
    if written is None and (keep_best or scheme != "auto"):
        written = max(tried, key=lambda t: t.trial.expected_agreement)
    selection = {"requested": scheme, "chosen": written.name if written else None,
                 "met": winner is not None, "reason": _reason(winner, written, tried, scorer),
                 **scorer.record(), "schemes": [t.record(scorer) for t in tried]}
    if written is None:
        return None, {**selection, "calibration": calibration.record()}
    shutil.move(str(written.path), dst)
    info = {**written.info, "calibration": {**calibration.record(), "method": written.info["calibration_method"]},
            "selection": selection}
    return info, selection


def _reason(winner: _Tried | None, written: _Tried | None, tried: Sequence[_Tried], scorer: Any) -> str:
    """One line: which scheme export serves and why (each scheme tried before it missed)."""
    before = "; ".join(f"{t.name} {t.why(scorer)}" for t in tried if t is not winner)
    if winner is not None:
        return f"{winner.name} {winner.why(scorer)}" + (f" (tried first: {before})" if before else "")
    if written is not None:
        return f"no scheme met the bounds on {scorer.rows.split} rows; writing the most accurate, {written.name} ({before})"
    return (f"no static INT8 scheme met the bounds on {scorer.rows.split} rows, so no INT8 variant is written "
            f"and the fused fp32 graph is served ({before})")
