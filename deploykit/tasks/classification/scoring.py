"""Scoring shared by training, evaluation and export: PyTorch logits and classification metrics.

Metrics come from scikit-learn and use the keys docs/architecture.md fixes: ``accuracy``, ``macro_f1``,
``weighted_f1``, ``per_class`` ({label: {precision, recall, f1, support}}) and ``n``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from deploykit.tasks.classification.decisions import softmax  # noqa: F401 - one softmax, training's name too


def classification_metrics(gold: Sequence[int], predicted: Sequence[int], label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro/weighted F1 and the per-class report.

    Args:
        gold: True label ids.
        predicted: Predicted label ids.
        label_names: Names of the label ids, in id order.

    Returns:
        The metric dict with the keys of docs/architecture.md.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, labels=ids, average="weighted", zero_division=0)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(label_names)},
        "n": int(len(gold)),
    }


def multi_label_metrics(gold: np.ndarray, predicted: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    """Multi-label metrics (scikit-learn): micro, macro, weighted and samples F1, subset accuracy,
    Hamming loss and the per-label report.

    Args:
        gold: 0/1 matrix [rows, labels].
        predicted: 0/1 (or bool) matrix [rows, labels].
        label_names: Names of the columns.

    Returns:
        ``micro_f1``, ``macro_f1``, ``weighted_f1``, ``samples_f1``, ``subset_accuracy``,
        ``hamming_loss``, ``per_class`` ({label: {precision, recall, f1, support}}), ``n``.
    """
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

    gold, predicted = np.asarray(gold, dtype=int), np.asarray(predicted, dtype=int)
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, zero_division=0)

    def f1_of(average: str) -> float:
        return float(f1_score(gold, predicted, average=average, zero_division=0)) if len(gold) else 0.0

    return {
        "micro_f1": f1_of("micro"), "macro_f1": f1_of("macro"), "weighted_f1": f1_of("weighted"),
        "samples_f1": f1_of("samples"),
        "subset_accuracy": float(accuracy_score(gold, predicted)) if len(gold) else 0.0,
        "hamming_loss": float(hamming_loss(gold, predicted)) if len(gold) else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(label_names)},
        "n": int(len(gold)),
    }


def score_metrics(gold: Sequence[float], scores: Sequence[float], groups: Sequence[Any] | None = None,
                  k: int = 10) -> dict[str, Any]:
    """A score head's metrics: Pearson and Spearman correlation with the gold scores (scipy) and,
    with each row's query (``groups``), the ranking metrics ``ranking_metrics`` gives.

    Returns:
        ``pearson``, ``spearman``, ``n``; with groups also ``ndcg_at_10``, ``mrr_at_10``, ``queries``.
    """
    from scipy.stats import pearsonr, spearmanr

    gold_arr, score_arr = np.asarray(gold, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    constant = len(gold_arr) < 2 or np.ptp(gold_arr) == 0 or np.ptp(score_arr) == 0
    out: dict[str, Any] = {"pearson": 0.0 if constant else float(pearsonr(gold_arr, score_arr).statistic),
                           "spearman": 0.0 if constant else float(spearmanr(gold_arr, score_arr).statistic),
                           "n": int(len(gold_arr))}
    if groups is not None:
        out.update(ranking_metrics(groups, gold_arr, score_arr, k))
    return out


def ranking_metrics(groups: Sequence[Any], gold: np.ndarray, scores: np.ndarray, k: int = 10) -> dict[str, Any]:
    """NDCG@k (scikit-learn's, gold scores as gains) and MRR@k (the first candidate whose gold is at
    least 0.5) averaged over the queries that have a relevant candidate, each query's candidates
    ranked by ``scores``.

    Returns:
        ``ndcg_at_10``, ``mrr_at_10`` (k = 10 in the names, whatever ``k``) and ``queries``.
    """
    from sklearn.metrics import ndcg_score

    by_query: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        by_query.setdefault(g, []).append(i)
    ndcg, mrr = [], []
    for rows in by_query.values():
        relevance = gold[rows]
        if len(rows) < 2 or not (relevance > 0).any():
            continue  # a query without a relevant candidate ranks nothing
        ndcg.append(float(ndcg_score([relevance], [scores[rows]], k=k)))
        order = np.argsort(-scores[rows], kind="stable")[:k]
        hits = np.flatnonzero(relevance[order] >= 0.5)
        mrr.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return {"ndcg_at_10": float(np.mean(ndcg)) if ndcg else 0.0, "mrr_at_10": float(np.mean(mrr)) if mrr else 0.0,
            "queries": len(ndcg)}


def tune_thresholds(gold: np.ndarray, probs: np.ndarray, default: float = 0.5) -> list[float]:
    """Each label's probability threshold that maximises its F1 on these rows.

    A label's candidates are the midpoints between its consecutive distinct probabilities (and
    ``default``); ties go to the candidate nearest ``default``. A label without a positive row
    keeps ``default``. Thresholds stay inside (0, 1).

    Args:
        gold: 0/1 matrix [rows, labels].
        probs: Probabilities [rows, labels].
        default: The threshold of a label the rows cannot tune.

    Returns:
        One threshold per label.
    """
    out = []
    for j in range(probs.shape[1]):
        y, p = np.asarray(gold[:, j], dtype=bool), np.asarray(probs[:, j], dtype=np.float64)
        if not y.any():
            out.append(default)
            continue
        values = np.unique(p)
        candidates = np.unique(np.concatenate([(values[1:] + values[:-1]) / 2, [default]]))
        picked = p[None, :] >= candidates[:, None]
        tp = (picked & y).sum(axis=1)
        f1 = 2 * tp / np.maximum(picked.sum(axis=1) + y.sum(), 1)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        chosen = candidates[best[np.argmin(np.abs(candidates[best] - default))]]
        out.append(float(np.clip(chosen, 1e-6, 1 - 1e-6)))
    return out




def predict_logits(model: Any, tokenizer: Any, texts: Sequence[Any], *, max_length: int,
                   batch_size: int = 128, bf16: bool = False, progress: bool = False,
                   truncation: str = "longest_first") -> np.ndarray:
    """Logits of a PyTorch sequence classifier for every text, in input order.

    Args:
        model: A transformers sequence-classification model.
        tokenizer: Its tokenizer.
        texts: The texts to score (or pairs of texts, encoded together).
        max_length: Truncation length in tokens.
        batch_size: Rows per forward pass.
        bf16: Run under bfloat16 autocast.
        progress: Show a progress bar.
        truncation: How a pair is cut (``longest_first``, ``only_second``).

    Returns:
        float32 array [len(texts), num_labels].
    """
    from deploykit.tasks.classification.data import encode

    # Tokenize once; each batch is then only padded (to its own longest row).
    encoded = encode(tokenizer, list(texts), max_length, truncation)
    rows = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
    return logits_for_rows(model, tokenizer, rows, batch_size=batch_size, bf16=bf16, progress=progress)


def logits_for_rows(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], *, batch_size: int = 128,
                    bf16: bool = False, progress: bool = False) -> np.ndarray:
    """Logits for rows tokenized already (unpadded ``input_ids``, masks), in input order.

    Rows are sorted by length so each batch pads little, then put back in the caller's order.
    Training scores its validation rows this way, tokenized once for every evaluation.

    Args:
        model: A transformers sequence-classification model.
        tokenizer: Its tokenizer (pads each batch).
        rows: One dict of token lists per row, without labels.
        batch_size: Rows per forward pass.
        bf16: Run under bfloat16 autocast.
        progress: Show a progress bar.

    Returns:
        float32 array [len(rows), num_labels].
    """
    import torch
    from deploykit.progress import bar as progress_bar

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = np.argsort([len(row["input_ids"]) for row in rows], kind="stable")
    out = np.zeros((len(rows), model.config.num_labels), dtype=np.float32)
    starts = range(0, len(rows), batch_size)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in progress_bar(starts, desc="scoring", disable=not progress, leave=False):
            index = order[start:start + batch_size]
            batch = tokenizer.pad([rows[i] for i in index], return_tensors="pt").to(device)
            out[index] = model(**batch).logits.float().cpu().numpy()
    model.train(was_training)
    return out
