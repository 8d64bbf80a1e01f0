"""The classic baseline: TF-IDF + logistic regression on the labeled training rows, its
regularisation chosen on dev. No I/O: texts and label ids in, a fitted model and its selection
record out.

Word unigrams and bigrams with sublinear tf (1 + log tf: a word said ten times is not ten times the
evidence), L2-normalised rows, then a multinomial logistic regression (lbfgs: deterministic, no
random state). C, the inverse L2 strength, is chosen from C_GRID by dev accuracy, ties going to the
smaller C (the stronger prior); the model kept is the one fitted on train with that C. Dev picks C
and is never trained on, as for every other model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
# A term must occur in two training texts: one seen once cannot generalise and only grows the
# bigram vocabulary (most bigrams of a few hundred texts occur once). Too few texts for any such
# term (a handful of rows) falls back to 1.
MIN_DF = 2
MAX_ITER = 5000  # lbfgs on sparse TF-IDF at C = 1000 needs a few hundred; far from this bound


@dataclass(frozen=True)
class TfidfBaseline:
    """A fitted TF-IDF + logistic regression model and how its C was chosen."""

    vectorizer: Any  # sklearn TfidfVectorizer, fitted on the training texts
    classifier: Any  # sklearn LogisticRegression, fitted on the training texts with C = c
    num_labels: int
    c: float
    grid: tuple[float, ...]
    dev_accuracy_per_c: dict[float, float]
    min_df: int
    fit_seconds: float  # the vectorizer and every C of the grid

    @property
    def vocabulary_size(self) -> int:
        return len(self.vectorizer.vocabulary_)

    @property
    def params(self) -> int:
        """Learned weights: the (classes, terms) coefficients and the intercepts (idf values not counted)."""
        return int(self.classifier.coef_.size + self.classifier.intercept_.size)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(N, num_labels) log-probabilities; a class absent from train gets -inf."""
        return _log_proba(self.classifier, self.vectorizer.transform(list(texts)), self.num_labels)


def _log_proba(classifier, x, num_labels: int) -> np.ndarray:
    out = np.full((x.shape[0], num_labels), -np.inf)  # (N, C)
    out[:, classifier.classes_] = classifier.predict_log_proba(x)
    return out


def _vectorize(texts: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    for min_df in (MIN_DF, 1):
        vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=min_df)
        try:
            return vectorizer, vectorizer.fit_transform(texts), min_df
        except ValueError:  # "After pruning, no terms remain" (too few texts for min_df 2), or no word at all
            pass
    raise ValueError("no word of two or more letters in the training texts to build TF-IDF features from")


def fit_tfidf_baseline(train_texts: Sequence[str], train_labels: Sequence[int], dev_texts: Sequence[str],
                       dev_labels: Sequence[int], num_labels: int, grid: Sequence[float] = C_GRID) -> TfidfBaseline:
    """Fit on train once per C in `grid`, keep the C with the best dev accuracy (ties: the smaller C)."""
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    y_train, y_dev = np.asarray(train_labels), np.asarray(dev_labels)
    vectorizer, x_train, min_df = _vectorize(list(train_texts))
    x_dev = vectorizer.transform(list(dev_texts))
    grid = tuple(sorted(float(c) for c in grid))
    best, best_acc, per_c = None, -1.0, {}
    for c in grid:
        clf = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER).fit(x_train, y_train)
        acc = float((_log_proba(clf, x_dev, num_labels).argmax(1) == y_dev).mean()) if len(y_dev) else 0.0
        per_c[c] = acc
        if acc > best_acc:  # strictly: a tie keeps the smaller C seen first
            best, best_acc = (c, clf), acc
    c, clf = best
    return TfidfBaseline(vectorizer, clf, num_labels, c, grid, per_c, min_df, time.perf_counter() - t0)
