"""Metric functions of the evaluation suite: plain numpy / scikit-learn, each testable on its own.

Retrieval uses a boolean *relevance* matrix rather than "the diagonal is correct", because distinct
items can share a caption (two shapes scenes both described as "a red circle"): retrieving any item
with an identical caption counts as a hit.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

DEFAULT_KS = (1, 5, 10)


@contextmanager
def _single_threaded() -> Iterator[None]:
    """One BLAS/OpenMP thread and no convergence warnings while fitting: on a small shared machine a
    multi-threaded BLAS was measured 10x slower for these fits (threads wait on each other)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# --- classification -------------------------------------------------------------------------------
def accuracy(predicted: Sequence[Any] | np.ndarray, gold: Sequence[Any] | np.ndarray) -> float:
    """Fraction of positions where `predicted` equals `gold` (0.0 for empty input)."""
    p, g = np.asarray(predicted), np.asarray(gold)
    if p.shape != g.shape:
        raise ValueError(f"predicted {p.shape} and gold {g.shape} differ in shape")
    return float((p == g).mean()) if g.size else 0.0


def per_type_accuracy(
    predicted: Sequence[Any] | np.ndarray, gold: Sequence[Any] | np.ndarray, types: Sequence[Hashable]
) -> dict[str, float]:
    """Accuracy per question type (sorted by type name)."""
    p, g, t = np.asarray(predicted), np.asarray(gold), np.asarray([str(x) for x in types])
    if not (len(p) == len(g) == len(t)):
        raise ValueError("predicted, gold and types must have the same length")
    return {str(kind): accuracy(p[t == kind], g[t == kind]) for kind in sorted(set(t.tolist()))}


def majority_label(train_labels: Iterable[Hashable]) -> Hashable:
    """The most frequent training label (ties: the one seen first)."""
    counts = Counter(train_labels)
    if not counts:
        raise ValueError("no training labels")
    return counts.most_common(1)[0][0]


def majority_accuracy(train_labels: Sequence[Hashable], test_labels: Sequence[Hashable]) -> float:
    """Accuracy of always predicting the most frequent training label."""
    label = majority_label(train_labels)
    return accuracy([label] * len(test_labels), list(test_labels))


def per_type_majority_accuracy(
    train_labels: Sequence[Hashable],
    train_types: Sequence[Hashable],
    test_labels: Sequence[Hashable],
    test_types: Sequence[Hashable],
) -> dict[str, float]:
    """Per type: accuracy of the type's most frequent training answer (a type prior, no image)."""
    by_type: dict[str, list[Hashable]] = {}
    for label, kind in zip(train_labels, train_types, strict=True):
        by_type.setdefault(str(kind), []).append(label)
    fallback = majority_label(train_labels)
    predicted = [majority_label(by_type[str(k)]) if str(k) in by_type else fallback for k in test_types]
    return per_type_accuracy(predicted, list(test_labels), list(test_types))


def linear_probe(
    train_x: np.ndarray,
    train_y: Sequence[Hashable] | np.ndarray,
    test_x: np.ndarray,
    test_y: Sequence[Hashable] | np.ndarray,
    *,
    c: float = 1.0,
    max_iter: int = 500,
    seed: int = 0,
    standardize: bool = True,
) -> float:
    """Test accuracy of a logistic-regression probe (L-BFGS, L2, `c`) fit on frozen features.

    Features are standardised first unless `standardize=False` (e.g. raw pixels already in [0, 1]).
    The fit stops after `max_iter` iterations even if not fully converged (no warning): on 2 CPU
    cores the suite must finish in minutes, and the probes' accuracy is settled long before.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(set(train_y.tolist())) < 2:  # a constant label: logistic regression cannot be fit
        return accuracy(np.full(len(test_y), train_y[0]), test_y)
    classifier = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    probe = make_pipeline(StandardScaler(), classifier) if standardize else classifier
    with _single_threaded():
        probe.fit(np.asarray(train_x, dtype=np.float64), train_y)
        predicted = probe.predict(np.asarray(test_x, dtype=np.float64))
    return accuracy(predicted, test_y)


def tfidf_probe(
    train_texts: Sequence[str],
    train_y: Sequence[Hashable],
    test_texts: Sequence[str],
    test_y: Sequence[Hashable],
    *,
    c: float = 10.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression: the bag-of-words text baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_labels, test_labels = np.asarray(train_y), np.asarray(test_y)
    if len(set(train_labels.tolist())) < 2:
        return accuracy(np.full(len(test_labels), train_labels[0]), test_labels)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    features = vectorizer.fit_transform(list(train_texts))
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    with _single_threaded():
        model.fit(features, train_labels)
        predicted = model.predict(vectorizer.transform(list(test_texts)))
    return accuracy(predicted, test_labels)


def zero_shot_predictions(image_embeddings: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """(N, E) images, (C, E) class prompts (both unit norm) -> (N,) index of the most similar class."""
    return np.asarray((image_embeddings @ class_embeddings.T).argmax(axis=1))


# --- retrieval -----------------------------------------------------------------------------------
def relevance_from_keys(query_keys: Sequence[Hashable], candidate_keys: Sequence[Hashable]) -> np.ndarray:
    """(Q, C) bool: candidate j is relevant to query i when their keys (e.g. captions) are equal."""
    q = np.asarray([str(k) for k in query_keys])
    c = np.asarray([str(k) for k in candidate_keys])
    return np.asarray(q[:, None] == c[None, :])


def recall_at_k(
    similarity: np.ndarray, relevance: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[int, float]:
    """R@k: fraction of queries (rows) with a relevant candidate among their k most similar.

    similarity, relevance: (Q, C). Ties in similarity are broken by candidate index (stable sort).
    Queries without any relevant candidate are an error (their recall would be undefined).
    """
    similarity, relevance = np.asarray(similarity), np.asarray(relevance, dtype=bool)
    if similarity.shape != relevance.shape:
        raise ValueError(f"similarity {similarity.shape} and relevance {relevance.shape} differ")
    if not relevance.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    order = np.argsort(-similarity, axis=1, kind="stable")  # (Q, C) best first
    ranked = np.take_along_axis(relevance, order, axis=1)  # relevance in rank order
    first_hit = ranked.argmax(axis=1)  # 0-based rank of the best-ranked relevant candidate
    return {k: float((first_hit < k).mean()) for k in ks}


def bidirectional_recall(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    relevance: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Image→text and text→image R@k. relevance: (N_images, N_texts) bool, True where text j
    describes image i. Keys: "i2t_R@1", …, "t2i_R@10" and "mean" (mean of all of them)."""
    similarity = image_embeddings @ text_embeddings.T  # (Ni, Nt) cosine (unit-norm inputs)
    out = {f"i2t_R@{k}": v for k, v in recall_at_k(similarity, relevance, ks).items()}
    out.update({f"t2i_R@{k}": v for k, v in recall_at_k(similarity.T, relevance.T, ks).items()})
    out["mean"] = float(np.mean(list(out.values())))
    return out


def chance_recall_at_k(relevance: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Expected R@k of a uniformly random ranking: per query with m relevant of C candidates,
    P(hit in top k) = 1 - C(C-m, k) / C(C, k)."""
    relevance = np.asarray(relevance, dtype=bool)
    n = relevance.shape[1]
    relevant = relevance.sum(axis=1)
    out = {}
    for k in ks:
        kk = min(k, n)
        miss = [math.comb(n - int(m), kk) / math.comb(n, kk) for m in relevant]
        out[k] = float(1.0 - np.mean(miss))
    return out


def chance_bidirectional_recall(relevance: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    out = {f"i2t_R@{k}": v for k, v in chance_recall_at_k(relevance, ks).items()}
    out.update({f"t2i_R@{k}": v for k, v in chance_recall_at_k(np.asarray(relevance).T, ks).items()})
    out["mean"] = float(np.mean(list(out.values())))
    return out


# --- aggregation ---------------------------------------------------------------------------------
def macro_average(values: Iterable[float | None]) -> float | None:
    """Unweighted mean of the values that are present (None when none are)."""
    present = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(present)) if present else None


def macro_by_group(
    scores: Mapping[str, Mapping[str, float | None]], *, complete: bool = False
) -> dict[str, float | None]:
    """{group: {task: score}} -> {group: macro average, ..., "overall": mean of the group macros}.

    complete=True: an average is None unless every task (every group, for "overall") has a value.
    """

    def average(values: Iterable[float | None]) -> float | None:
        values = list(values)
        return None if complete and any(v is None for v in values) else macro_average(values)

    out: dict[str, float | None] = {group: average(tasks.values()) for group, tasks in scores.items()}
    out["overall"] = average(out.values())
    return out
