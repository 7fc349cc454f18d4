"""Classification metrics for evaluating labels against a gold standard (plain Python).

Used by ``cx360 eval sentiment`` and reusable by other evaluations (identity matching, ...).
All functions take two equally long sequences, gold (expected) first, predicted second.

Conventions (the common ones, as in scikit-learn with ``zero_division=0``):
- precision of a class nobody predicted is 0, recall of a class absent from gold is 0, and
  F1 is 0 when precision + recall is 0;
- :func:`macro_f1` averages F1 over ``labels``; by default over the classes that occur in gold
  or predictions, so that a class absent from both (say, no neutral posts in a small slice)
  neither helps nor hurts. Pass ``labels`` explicitly to fix the set.
"""
from __future__ import annotations

from collections import Counter
from typing import Hashable, Iterable, Sequence


def _check(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold and predicted differ in length: {len(gold)} != {len(pred)}")


def _labels(gold: Sequence, pred: Sequence, labels: Iterable[Hashable] | None) -> list:
    if labels is not None:
        return list(labels)
    return sorted(set(gold) | set(pred), key=str)


def accuracy(gold: Sequence, pred: Sequence) -> float:
    """Share of positions where the prediction equals gold; 0.0 for empty input."""
    _check(gold, pred)
    if not gold:
        return 0.0
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def confusion_matrix(gold: Sequence, pred: Sequence,
                     labels: Iterable[Hashable] | None = None) -> list[list[int]]:
    """``matrix[i][j]`` = number of items with gold ``labels[i]`` predicted as ``labels[j]``.
    Pairs whose gold or predicted label is not in ``labels`` are not counted."""
    _check(gold, pred)
    labels = _labels(gold, pred, labels)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred):
        if g in index and p in index:
            matrix[index[g]][index[p]] += 1
    return matrix


def per_class(gold: Sequence, pred: Sequence,
              labels: Iterable[Hashable] | None = None) -> dict:
    """``{label: {"precision", "recall", "f1", "support"}}`` (support = gold count)."""
    _check(gold, pred)
    labels = _labels(gold, pred, labels)
    true_pos = Counter(g for g, p in zip(gold, pred) if g == p)
    gold_n, pred_n = Counter(gold), Counter(pred)
    out = {}
    for label in labels:
        tp = true_pos[label]
        precision = tp / pred_n[label] if pred_n[label] else 0.0
        recall = tp / gold_n[label] if gold_n[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1,
                      "support": gold_n[label]}
    return out


def macro_f1(gold: Sequence, pred: Sequence,
             labels: Iterable[Hashable] | None = None) -> float:
    """Unweighted mean of the per-class F1 scores (see the module conventions)."""
    scores = per_class(gold, pred, labels)
    if not scores:
        return 0.0
    return sum(s["f1"] for s in scores.values()) / len(scores)


def set_prf(gold_sets: Sequence[Iterable], pred_sets: Sequence[Iterable]) -> dict:
    """Micro-averaged precision/recall/F1 of multi-label predictions (e.g. aspects): every
    (item, label) pair is one decision. Returns ``{"precision", "recall", "f1", "tp", "fp",
    "fn"}``; precision is 1.0 when nothing was predicted and recall 1.0 when nothing was due."""
    _check(gold_sets, pred_sets)
    tp = fp = fn = 0
    for gold, pred in zip(gold_sets, pred_sets):
        gold, pred = set(gold), set(pred)
        tp += len(gold & pred)
        fp += len(pred - gold)
        fn += len(gold - pred)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
