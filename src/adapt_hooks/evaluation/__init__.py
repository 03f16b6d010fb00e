"""Evaluation on the real hallucination benchmarks from local files, every method side by side.

:mod:`.coco` (the 80 COCO categories, their synonyms, the caption parser, the annotation files),
:mod:`.chair` (CHAIR_i / CHAIR_s / recall), :mod:`.pope` (POPE splits, the yes/no parser and its
metrics), :mod:`.amber` (AMBER's generative and discriminative metrics), :mod:`.stats`
(bootstrap 95 % intervals over images and paired comparisons), :mod:`.methods` (the methods
compared, from the Python API's objects) and :mod:`.runner` (``adapt-hooks eval``). The metric
modules are pure functions of answers and annotations: no model, no download.
"""

from . import amber, chair, coco, pope, stats

__all__ = ["amber", "chair", "coco", "pope", "stats"]
