"""CHAIR (free description) and POPE (yes/no) metrics, and mean ± std over seeds.

CHAIR (Rohrbach et al., 2018) on the object vocabulary of this world: every colour-shape bigram
of a caption is an object mention (a kind, or a combination that does not exist, which is never
in the scene); mentions are counted once per caption.
``CHAIR_i`` = hallucinated mentions / all mentions; ``CHAIR_s`` = captions with at least one
hallucinated mention / all captions. ``recall`` = scene objects named / scene objects.

POPE (Li et al., 2023) treats "yes" as the positive class: accuracy, precision, recall, F1 and
the share of "yes" answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def chair(mentioned: Sequence[set], truth: Sequence[set]) -> dict[str, float]:
    """CHAIR_i, CHAIR_s and object recall of captions; ``mentioned[i]`` and ``truth[i]`` are sets
    of comparable object labels (here ``(colour, shape)``) of caption ``i``."""
    if len(mentioned) != len(truth):
        raise ValueError("one set of mentions per set of true objects")
    n_mentions = sum(len(m) for m in mentioned)
    hallucinated = [len(set(m) - set(t)) for m, t in zip(mentioned, truth)]
    n_true = sum(len(t) for t in truth)
    found = sum(len(set(m) & set(t)) for m, t in zip(mentioned, truth))
    return {
        "CHAIR_i": sum(hallucinated) / n_mentions if n_mentions else 0.0,
        "CHAIR_s": sum(h > 0 for h in hallucinated) / len(truth) if truth else 0.0,
        "recall": found / n_true if n_true else 0.0,
    }


def pope(predicted_yes: Sequence[bool], label_yes: Sequence[bool]) -> dict[str, float]:
    """POPE accuracy, precision, recall and F1 ("yes" positive), and the "yes" ratio."""
    if len(predicted_yes) != len(label_yes):
        raise ValueError("one prediction per label")
    pairs = [(bool(p), bool(y)) for p, y in zip(predicted_yes, label_yes)]
    tp = sum(p and y for p, y in pairs)
    fp = sum(p and not y for p, y in pairs)
    fn = sum(not p and y for p, y in pairs)
    tn = sum(not p and not y for p, y in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs) if pairs else 0.0,
        "precision": precision,
        "recall": recall,
        "F1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / len(pairs) if pairs else 0.0,
    }


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_mean_std(values: Iterable[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of a score that should be higher on ``positive`` cases: the
    probability that a random positive scores above a random negative, ties counting half
    (the Mann–Whitney statistic). NaN when either side is empty."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    pos, neg = np.asarray(positive, dtype=float), np.sort(np.asarray(negative, dtype=float))
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def average_precision(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the precision-recall curve of a score that should be higher on ``positive``
    cases (average precision: the mean, over positives, of the precision among the cases scoring
    at least as high; ties count against). NaN when there is no positive."""
    if len(positive) == 0:
        return float("nan")
    pos = np.sort(np.asarray(positive, dtype=float))
    every = np.sort(np.concatenate([pos, np.asarray(negative, dtype=float)]))
    at_least = len(every) - np.searchsorted(every, pos, side="left")
    positive_at_least = len(pos) - np.searchsorted(pos, pos, side="left")
    return float(np.mean(positive_at_least / at_least))
