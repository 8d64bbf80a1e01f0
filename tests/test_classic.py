"""The classic baseline (lib/training/classic.py): TF-IDF + logistic regression fitted on train,
C chosen on dev by accuracy with ties to the smaller C, on a tiny separable text task."""

from __future__ import annotations

import random

import numpy as np
import pytest

from components.lib.training.classic import C_GRID, fit_tfidf_baseline

FRUIT = "apple banana cherry grape melon".split()
CARS = "car truck engine wheel brake".split()
FILLER = "the a of and to in".split()


def _texts(n: int, topic: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(topic, 3) + rng.choices(FILLER, k=4)) for _ in range(n)]


def _task():
    """An imbalanced train split (12 fruit, 4 cars), a balanced dev split, a balanced test split."""
    train = (_texts(12, FRUIT, 1) + _texts(4, CARS, 2), [0] * 12 + [1] * 4)
    dev = (_texts(5, FRUIT, 3) + _texts(5, CARS, 4), [0] * 5 + [1] * 5)
    test = (_texts(10, FRUIT, 5) + _texts(10, CARS, 6), [0] * 10 + [1] * 10)
    return train, dev, test


def test_c_is_chosen_on_dev_and_the_model_predicts_the_topics():
    (xt, yt), (xd, yd), (xs, ys) = _task()
    fit = fit_tfidf_baseline(xt, yt, xd, yd, num_labels=2)
    per_c = fit.dev_accuracy_per_c
    assert list(per_c) == list(C_GRID) == list(fit.grid)
    # a strong prior (C = 0.01) predicts the majority class everywhere: half the balanced dev split
    assert per_c[0.01] == 0.5
    best = max(per_c.values())
    assert best == 1.0 and fit.c == min(c for c, a in per_c.items() if a == best) > 0.01
    # dev accuracy of the kept model is the one recorded for its C (the kept model is that C's fit)
    assert (fit.logits(xd).argmax(1) == np.asarray(yd)).mean() == per_c[fit.c]
    assert (fit.logits(xs).argmax(1) == np.asarray(ys)).mean() == 1.0
    assert fit.min_df == 2 and fit.params == fit.vocabulary_size + 1  # binary: one coefficient row, one intercept
    assert fit.fit_seconds > 0


def test_dev_is_never_trained_on_and_ties_go_to_the_smaller_c():
    (xt, yt), (xd, yd), _ = _task()
    fit = fit_tfidf_baseline(xt, yt, [t + " zebra zebra" for t in xd], yd, num_labels=2, grid=(10.0, 1.0, 100.0))
    assert "zebra" not in fit.vectorizer.vocabulary_  # the vocabulary and idf come from train alone
    assert fit.grid == (1.0, 10.0, 100.0)
    tied = fit_tfidf_baseline(xt, yt, xd, yd, num_labels=2, grid=(100.0, 1000.0))
    assert tied.dev_accuracy_per_c[100.0] == tied.dev_accuracy_per_c[1000.0] and tied.c == 100.0


def test_a_class_missing_from_train_gets_no_probability_and_few_texts_keep_every_term():
    fit = fit_tfidf_baseline(["apple pie", "car wheel"], [0, 2], ["apple", "wheel"], [0, 2], num_labels=3)
    assert fit.min_df == 1  # no term is in two of the two texts: min_df 2 would leave none
    logits = fit.logits(["apple tart", "wheel car"])
    assert logits.shape == (2, 3) and np.isneginf(logits[:, 1]).all()
    assert logits.argmax(1).tolist() == [0, 2]
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0)
    assert fit.params == fit.vocabulary_size + 1  # two classes seen: scikit-learn's binary model
    with pytest.raises(ValueError, match="no word"):
        fit_tfidf_baseline(["a", "b"], [0, 1], ["a"], [0], num_labels=2)  # no word at all (one-letter tokens)
