"""The TF-IDF + logistic-regression baseline a fine-tuned model has to beat.

A strong classical baseline for short texts (word uni- and bi-grams, sublinear tf), trained on
exactly the rows the transformer trains on, so the comparison on the held-out split is fair.
"""

from __future__ import annotations

from typing import Any

from deploykit.tasks.classification.data import Split
from deploykit.tasks.classification.scoring import classification_metrics


def tfidf_baseline(train: Split, evaluate: dict[str, Split],
                   label_names: list[str]) -> dict[str, dict[str, Any]]:
    """Fit TF-IDF + logistic regression on ``train`` and score each split of ``evaluate``.

    Args:
        train: The training rows (label ids).
        evaluate: Splits to score, by name (e.g. ``{"validation": ..., "test": ...}``).
        label_names: Label names in id order.

    Returns:
        ``{split name: metrics}`` with deploykit's metric keys (``accuracy``, ``macro_f1``, ...).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    classifier = LogisticRegression(max_iter=2000, C=4.0).fit(vectorizer.fit_transform(train.texts),
                                                               train.labels)
    return {name: classification_metrics(split.labels,
                                         classifier.predict(vectorizer.transform(split.texts)).tolist(),
                                         label_names)
            for name, split in evaluate.items()}
