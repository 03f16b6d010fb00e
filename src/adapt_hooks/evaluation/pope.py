"""POPE (Li et al., 2023): polling-based object probing with yes/no questions.

For each image, ``n`` objects that are present ("yes") and ``n`` that are absent ("no") are
asked about as "Is there a {object} in the image?". The three settings differ in how the absent
objects are chosen (the paper's sampling rules, from instance annotations):

* ``random``: uniformly among the categories the image does not contain;
* ``popular``: the most frequent categories of the dataset (by the number of images that
  contain them) that the image does not contain, most frequent first;
* ``adversarial``: for each present object asked about, in turn, the category that co-occurs
  most often with *that* object (counted in images), that the image does not contain and that was
  not asked yet; a uniformly drawn absent category when none co-occurs (the release's rule).

Ties are broken by category name, and the present objects are drawn uniformly (seeded), so a
built split is reproducible. Questions read "Is there a/an {object} in the image?", with "an"
before a vowel as in the released files. The released question files can be read instead
(:func:`read_questions`): JSON lines ``{"question_id", "image", "text", "label"}`` (``label``
"yes"/"no"), or a JSON list of such objects.

Answers are parsed by :func:`parse_yes_no`: the first standalone word "yes" or "no"
(case-insensitive) decides; an answer with neither is *unparsed* and counted as "no" (and
reported). :func:`parse_like_release` is the rule of POPE's own ``evaluate.py``, which most papers'
tables use: "no" when the first sentence has the word "no", "No" or "not", else "yes"
(``PARSERS`` names both). Metrics treat "yes" as positive: accuracy, precision, recall, F1 and
the yes-ratio.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .coco import CocoSet
from .stats import per_unit, ratio

SPLITS = ("random", "popular", "adversarial")
TEMPLATE = "Is there a {} in the image?"
#: Per-image counts, in this order.
COUNTS = ("tp", "fp", "fn", "tn", "unparsed")

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Question:
    """One POPE question: about ``image`` (a file name), asking whether ``obj`` is there."""

    image: str
    obj: str
    label: bool                       # True: the object is there ("yes")
    text: str = ""
    question_id: int | None = None

    @property
    def prompt(self) -> str:
        return self.text or ask(TEMPLATE, self.obj)


#: A yes/no parser: True for "yes", False for "no", None when it cannot tell.
Parser = Callable[[str], "bool | None"]


def parse_yes_no(answer: str) -> bool | None:
    """True for "yes", False for "no", by the first standalone yes/no word; None when neither."""
    found = _YES_NO.search(answer)
    return None if found is None else found.group(1).lower() == "yes"


def parse_like_release(answer: str) -> bool:
    """POPE's release rule: False when the first sentence (up to the first ".", commas dropped,
    split at spaces) has the word "no", "No" or "not"; True otherwise (never unparsed)."""
    first = answer.split(".", 1)[0].replace(",", "")
    return not {"no", "No", "not"} & set(first.split(" "))


#: Yes/no parsers by name (``adapt-hooks eval --yes-no``).
PARSERS: dict[str, Parser] = {"first": parse_yes_no, "pope": parse_like_release}


def frequencies(objects: Mapping[int, set[str]]) -> Counter:
    """Number of images that contain each category."""
    return Counter(c for found in objects.values() for c in found)


def cooccurrence(objects: Mapping[int, set[str]]) -> dict[str, Counter]:
    """``co[a][b]``: number of images that contain both ``a`` and ``b`` (``a != b``)."""
    co: dict[str, Counter] = {}
    for found in objects.values():
        for a in found:
            co.setdefault(a, Counter()).update(b for b in found if b != a)
    return co


def ask(template: str, obj: str) -> str:
    """``template`` (with ``{}`` for the object) asked about ``obj``: "a {}" reads "an {}" before a vowel."""
    if obj and obj[0].lower() in "aeiou":
        template = re.sub(r"\ba \{\}", "an {}", template)
    return template.format(obj)


def negatives(split: str, present: set[str], categories: Sequence[str], n: int, rng: np.random.Generator,
              freq: Counter, co: Mapping[str, Counter], positives: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """``n`` absent categories of one image by ``split``'s rule (``adversarial``: one per object
    of ``positives``, in order)."""
    absent = sorted(c for c in categories if c not in present)
    if split == "random":
        picks = rng.choice(len(absent), size=min(n, len(absent)), replace=False)
        return [absent[int(i)] for i in picks]
    if split == "popular":
        score = {c: freq.get(c, 0) for c in absent}
    elif split == "adversarial":
        chosen: list[str] = []
        for asked in list(positives)[:n]:
            left = [c for c in absent if c not in chosen]
            if not left:
                break
            seen = co.get(asked, Counter())
            together = [c for c in left if seen.get(c, 0) > 0]
            chosen.append(min(together, key=lambda c: (-seen[c], c)) if together else left[int(rng.integers(len(left)))])
        return chosen
    else:
        raise ValueError(f"POPE split must be one of {SPLITS}, got {split!r}")
    return sorted(absent, key=lambda c: (-score[c], c))[:n]


def build_questions(
    data: CocoSet, split: str, *, n_images: int = 500, n_per_side: int = 3, seed: int = 0, min_objects: int | None = None
) -> list[Question]:
    """A POPE split from instance annotations: ``n_images`` images with at least ``min_objects``
    (default ``n_per_side``) categories, drawn uniformly (seeded); per image ``n_per_side``
    present and ``n_per_side`` absent objects, yes and no alternating as in the released files.
    Frequencies and co-occurrences are counted over every image of ``data``."""
    min_objects = n_per_side if min_objects is None else min_objects
    rng = np.random.default_rng(seed)
    freq, co = frequencies(data.objects), cooccurrence(data.objects)
    categories = sorted(set(data.categories.values()))
    eligible = [i for i in data.image_ids if len(data.objects.get(i, ())) >= min_objects]
    chosen = sorted(int(i) for i in rng.choice(eligible, size=min(n_images, len(eligible)), replace=False))
    questions = []
    for image in chosen:
        present = sorted(data.objects[image])
        yes = [present[int(i)] for i in rng.choice(len(present), size=min(n_per_side, len(present)), replace=False)]
        no = negatives(split, set(present), categories, n_per_side, rng, freq, co, positives=yes)
        for p, q in zip(yes, no):
            questions.append(Question(data.files[image], p, True))
            questions.append(Question(data.files[image], q, False))
    return [Question(q.image, q.obj, q.label, ask(TEMPLATE, q.obj), i + 1) for i, q in enumerate(questions)]


_ASKED = re.compile(r"is there an? (.+?) in the image", re.IGNORECASE)


def read_questions(path: str | Path) -> list[Question]:
    """Questions of a released POPE file (JSON lines or a JSON list of ``{"question_id",
    "image", "text", "label"}``); the object is read from the question text."""
    raw = Path(path).read_text(encoding="utf-8").strip()
    rows = json.loads(raw) if raw.startswith("[") else [json.loads(line) for line in raw.splitlines() if line.strip()]
    out = []
    for row in rows:
        asked = _ASKED.search(row["text"])
        label = str(row["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"{path}: question {row.get('question_id')} has label {row['label']!r}, not yes/no")
        out.append(Question(str(row["image"]), asked.group(1) if asked else "", label == "yes", str(row["text"]),
                            row.get("question_id")))  # fmt: skip
    return out


def answer_counts(predicted: Sequence[bool | None], labels: Sequence[bool]) -> list[int]:
    """:data:`COUNTS` of a group of answers (unparsed answers count as "no")."""
    if len(predicted) != len(labels):
        raise ValueError("one prediction per label")
    tp = fp = fn = tn = unparsed = 0
    for p, y in zip(predicted, labels):
        unparsed += p is None
        p = bool(p)
        tp += p and y
        fp += p and not y
        fn += (not p) and y
        tn += (not p) and not y
    return [tp, fp, fn, tn, unparsed]


def metrics_from_counts(sums: np.ndarray) -> dict[str, np.ndarray]:
    """POPE metrics from :data:`COUNTS` summed over images (any leading shape)."""
    sums = np.asarray(sums, float)
    tp, fp, fn, tn, unparsed = (sums[..., i] for i in range(len(COUNTS)))
    total = tp + fp + fn + tn
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tp + tn, total),
        "precision": precision,
        "recall": recall,
        "F1": ratio(2 * precision * recall, precision + recall),
        "yes_ratio": ratio(tp + fp, total),
        "unparsed": ratio(unparsed, total),
    }


def pope(answers: Sequence[str], questions: Sequence[Question], parse: Parser = parse_yes_no) -> dict[str, float]:
    """POPE metrics of answers to ``questions`` (one answer each)."""
    counts = answer_counts([parse(a) for a in answers], [q.label for q in questions])
    return {k: float(v) for k, v in metrics_from_counts(np.array(counts, float)).items()}


def count_matrix(answers: Sequence[str], questions: Sequence[Question], parse: Parser = parse_yes_no) -> tuple[list[str], np.ndarray]:
    """Images (in first-seen order) and ``[n_images, len(COUNTS)]``: the bootstrap resamples
    images, each with all its questions."""
    rows = [(parse(a), q.label) for a, q in zip(answers, questions)]
    return per_unit([q.image for q in questions], rows, lambda group: answer_counts(*zip(*group)), len(COUNTS))
