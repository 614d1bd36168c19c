"""Metric functions on hand-made inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import metrics as M


def test_accuracy_and_per_type() -> None:
    assert M.accuracy(["a", "b", "c", "d"], ["a", "x", "c", "x"]) == 0.5
    assert M.accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        M.accuracy([1, 2], [1])
    per_type = M.per_type_accuracy(
        ["yes", "no", "red", "2"], ["yes", "yes", "red", "3"], ["exist", "exist", "color", "count"]
    )
    assert per_type == {"color": 1.0, "count": 0.0, "exist": 0.5}


def test_majority_baselines() -> None:
    assert M.majority_label(["b", "a", "b", "c"]) == "b"
    assert M.majority_accuracy(["b", "a", "b"], ["b", "c", "b", "a"]) == 0.5
    per_type = M.per_type_majority_accuracy(
        ["yes", "yes", "no", "red", "red", "blue"],
        ["exist", "exist", "exist", "color", "color", "color"],
        ["yes", "no", "red", "blue"],
        ["exist", "exist", "color", "color"],
    )
    assert per_type == {"color": 0.5, "exist": 0.5}


def test_linear_probe_on_separable_data_is_perfect() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    labels = rng.integers(0, 3, size=300)
    x = centers[labels] + rng.normal(scale=0.3, size=(300, 3))
    names = np.array(["cat", "dog", "fox"])[labels]
    assert M.linear_probe(x[:200], names[:200], x[200:], names[200:]) == 1.0
    # a constant training label cannot fit a classifier: predicts it
    assert M.linear_probe(x[:5], ["a"] * 5, x[5:9], ["a", "a", "b", "a"]) == 0.75


def test_tfidf_probe_on_keyword_data() -> None:
    train = ["the cat sat", "a cat ran", "my cat sleeps", "the dog barked", "a dog ran", "my dog digs"] * 3
    labels = ["cat", "cat", "cat", "dog", "dog", "dog"] * 3
    assert M.tfidf_probe(train, labels, ["cat here", "dog there"], ["cat", "dog"]) == 1.0


def test_zero_shot_predictions() -> None:
    classes = np.eye(3)
    images = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.98], [0.1, 0.99, 0.0]])
    assert M.zero_shot_predictions(images, classes).tolist() == [0, 2, 1]


def test_recall_at_k_known_ranks() -> None:
    # query 0: relevant item ranked 1st; query 1: ranked 3rd; query 2: ranked 2nd
    similarity = np.array([[0.9, 0.1, 0.5], [0.8, 0.1, 0.7], [0.2, 0.9, 0.3]])
    relevance = np.eye(3, dtype=bool)
    assert M.recall_at_k(similarity, relevance, ks=(1, 2, 3)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        3: 1.0,
    }
    # a second relevant candidate (an identical caption) ranked first turns query 1 into a hit at 1
    relevance[1, 0] = True
    assert M.recall_at_k(similarity, relevance, ks=(1,))[1] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="relevant"):
        M.recall_at_k(similarity, np.zeros((3, 3), dtype=bool))


def test_bidirectional_recall_identity_and_swap() -> None:
    emb = np.eye(4)
    perfect = M.bidirectional_recall(emb, emb, np.eye(4, dtype=bool), ks=(1, 5))
    assert perfect == {"i2t_R@1": 1.0, "i2t_R@5": 1.0, "t2i_R@1": 1.0, "t2i_R@5": 1.0, "mean": 1.0}
    # texts of images 0 and 1 swapped: those two miss at 1 in both directions
    texts = emb[[1, 0, 2, 3]]
    swapped = M.bidirectional_recall(emb, texts, np.eye(4, dtype=bool), ks=(1, 2))
    assert swapped["i2t_R@1"] == 0.5 and swapped["t2i_R@1"] == 0.5
    assert swapped["i2t_R@2"] == 1.0 and swapped["t2i_R@2"] == 1.0


def test_relevance_from_keys_and_chance() -> None:
    relevance = M.relevance_from_keys(["a", "b", "a"], ["a", "b", "a"])
    assert relevance.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    chance = M.chance_recall_at_k(np.eye(10, dtype=bool), ks=(1, 5, 10))
    assert chance == {1: pytest.approx(0.1), 5: pytest.approx(0.5), 10: pytest.approx(1.0)}
    # 2 relevant of 4, k=1: 1/2; k=2: 1 - C(2,2)/C(4,2) = 5/6
    two = np.array([[True, True, False, False]])
    assert M.chance_recall_at_k(two, ks=(1, 2)) == {1: pytest.approx(0.5), 2: pytest.approx(5 / 6)}
    # chance agrees with the mean R@k of many random rankings
    rng = np.random.default_rng(0)
    relevance = np.eye(20, dtype=bool)
    simulated = np.mean([M.recall_at_k(rng.random((20, 20)), relevance, ks=(5,))[5] for _ in range(300)])
    assert simulated == pytest.approx(M.chance_recall_at_k(relevance, ks=(5,))[5], abs=0.02)


def test_macro_averages() -> None:
    assert M.macro_average([0.5, None, 1.0]) == 0.75
    assert M.macro_average([None]) is None
    macro = M.macro_by_group(
        {"vision": {"a": 0.8, "b": 0.6}, "language": {"c": 0.4}, "multimodal": {"d": None}}
    )
    assert macro["vision"] == pytest.approx(0.7)
    assert macro["language"] == pytest.approx(0.4)
    assert macro["multimodal"] is None
    assert macro["overall"] == pytest.approx(0.55)
    strict = M.macro_by_group({"vision": {"a": 0.8, "b": None}, "language": {"c": 0.4}}, complete=True)
    assert strict == {"vision": None, "language": 0.4, "overall": None}
