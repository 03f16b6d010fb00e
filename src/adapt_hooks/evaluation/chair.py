"""CHAIR (Rohrbach et al., 2018): object hallucination in image captions.

A caption's objects are the categories its words name (:class:`~.coco.Vocabulary`); its ground
truth is the image's instance categories plus the objects its reference captions name. Every
mention counts, as in the original script (a caption that names "two dogs" and later "the dog"
names a dog twice); ``per_mention=False`` counts each object once per caption instead.

* ``CHAIR_i`` = hallucinated objects / named objects, over all captions;
* ``CHAIR_s`` = captions with at least one hallucinated object / captions;
* ``recall`` = ground-truth objects named / ground-truth objects;
* ``objects_per_caption`` = named objects / captions (short captions hallucinate less: read
  CHAIR beside it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .coco import Vocabulary, coco_vocabulary
from .stats import ratio

#: Per-image counts, in this order: named, hallucinated, has-hallucination, truth, truth named, captions.
COUNTS = ("named", "hallucinated", "any_hallucinated", "truth", "covered", "captions")


def caption_details(caption: str, truth: set[str], vocabulary: Vocabulary | None = None, *, per_mention: bool = True) -> dict:
    """What CHAIR sees in one caption: the objects it names, which are hallucinated, which of the
    truth it covers, and the counts of :data:`COUNTS`."""
    vocabulary = vocabulary or coco_vocabulary()
    mentions = vocabulary.mentions(caption)
    named = [m.category for m in mentions] if per_mention else sorted({m.category for m in mentions})
    hallucinated = [c for c in named if c not in truth]
    covered = sorted(set(named) & set(truth))
    return {
        "mentions": [[m.phrase, m.category] for m in mentions],
        "objects": named,
        "hallucinated": hallucinated,
        "covered": covered,
        "truth": sorted(truth),
        "counts": [len(named), len(hallucinated), int(bool(hallucinated)), len(truth), len(covered), 1],
    }


def metrics_from_counts(sums: np.ndarray) -> dict[str, np.ndarray]:
    """CHAIR metrics from :data:`COUNTS` summed over images (any leading shape)."""
    sums = np.asarray(sums, float)
    named, hallucinated, any_h, truth, covered, captions = (sums[..., i] for i in range(len(COUNTS)))
    return {
        "CHAIR_i": ratio(hallucinated, named),
        "CHAIR_s": ratio(any_h, captions),
        "recall": ratio(covered, truth),
        "objects_per_caption": ratio(named, captions),
    }


def chair(
    captions: Sequence[str], truths: Sequence[set[str]], vocabulary: Vocabulary | None = None, *, per_mention: bool = True
) -> tuple[dict[str, float], list[dict]]:
    """CHAIR of ``captions[i]`` against ``truths[i]``: the metrics and per-caption details."""
    if len(captions) != len(truths):
        raise ValueError("one set of true objects per caption")
    vocabulary = vocabulary or coco_vocabulary()
    details = [caption_details(c, t, vocabulary, per_mention=per_mention) for c, t in zip(captions, truths)]
    counts = count_matrix(details)
    return {k: float(v) for k, v in metrics_from_counts(counts.sum(0)).items()}, details


def count_matrix(details: Sequence[Mapping]) -> np.ndarray:
    """``[n_images, len(COUNTS)]`` from per-caption details (the bootstrap's input)."""
    return np.array([d["counts"] for d in details], dtype=float).reshape(len(details), len(COUNTS))
