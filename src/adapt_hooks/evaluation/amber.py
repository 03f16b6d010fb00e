"""AMBER (Wang et al., 2023): generative and discriminative hallucination on its released files.

Files read, from the ``data/`` folder of the AMBER release (only the fields named here):

* ``query/query_all.json`` (or ``query_generative.json`` / ``query_discriminative*.json``): a
  JSON list of ``{"id", "image", "query"}``;
* ``annotations.json``: a JSON list indexed by the same ``id`` (1-based, ``annotations[id - 1]``,
  or matched by an ``"id"`` field when present) of ``{"type", "truth", "hallu"?}``: for
  ``"type": "generative"``, ``truth`` lists the objects in the image and ``hallu`` the objects a
  hallucinating description is likely to name; for the other types
  (``discriminative-hallucination`` for existence, ``discriminative-attribute-state`` /
  ``-number`` / ``-action``, ``discriminative-relation`` or ``relation``) ``truth`` is ``"yes"``
  or ``"no"``;
* ``relation.json``: ``{object: [associated words]}``: its keys and words are the object
  vocabulary, and a word associated with a true object names that object;
* ``safe_words.txt`` (optional): words never counted as hallucinated.

The metrics follow the release's ``inference.py``, which produced the figures papers report.
Generative, over descriptions, with every occurrence of a vocabulary word counted:

* ``CHAIR`` = occurrences naming no true object (nor an associated word, nor a safe word) /
  occurrences;
* ``Cover`` = entries of ``truth`` named (directly or by an associated word) / entries of ``truth``;
* ``Hal`` = descriptions with at least one hallucinated occurrence / descriptions;
* ``Cog`` = entries of ``hallu`` named (directly or by an associated word) / entries of ``hallu``.

As in the script, a word is credited to the first entry it matches, associated words before
the entries themselves, so a ``truth`` that lists an object twice can never be fully covered.
Two steps of the script are not reproduced, since they need NLTK and spaCy models this package
does not depend on: vocabulary words are found by this package's phrase matcher (plurals
included) instead of a part-of-speech tagger's nouns, and a word is not also matched to a true
object by word-vector similarity (> 0.8). Figures can therefore differ from the script's slightly.

Discriminative (yes/no queries): answers parsed by one of :data:`.pope.PARSERS` (the first
standalone yes/no by default; the release itself compares the whole answer with "Yes" / "No"),
and, as in the release, "no" is the positive class (a hallucination detected): precision = correct "no" /
answers "no", recall = correct "no" / true "no", with accuracy, F1 and the share of unparsed
answers (never correct, never "no"), per family (existence, attribute, relation) and all together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .coco import Vocabulary
from .pope import Parser, parse_yes_no
from .stats import per_unit, ratio

#: Per-description counts of the generative task, in this order.
COUNTS = ("named", "hallucinated", "any_hallucinated", "truth", "covered", "hallu", "cognitive", "descriptions")
#: Per-image counts of the discriminative task, in this order.
QA_COUNTS = ("correct", "answered_no", "correct_no", "truth_no", "questions", "unparsed")
FAMILIES = ("existence", "attribute", "relation")


@dataclass(frozen=True)
class AmberItem:
    """One AMBER query joined with its annotation."""

    id: int
    image: str
    query: str
    type: str
    truth: object                          # list of objects (generative) or "yes"/"no"
    hallu: tuple[str, ...] = ()

    @property
    def generative(self) -> bool:
        return self.type == "generative"

    @property
    def family(self) -> str | None:
        """existence / attribute / relation for a discriminative item."""
        if self.generative:
            return None
        if "hallucination" in self.type or "existence" in self.type:
            return "existence"
        return "attribute" if "attribute" in self.type else "relation"


@dataclass
class AmberSet:
    items: list[AmberItem]
    association: dict[str, list[str]] = field(default_factory=dict)
    safe_words: frozenset[str] = frozenset()

    def vocabulary(self) -> Vocabulary:
        """Each AMBER object word (relation.json's keys and words, every truth / hallu entry) is
        its own category."""
        names = set(self.association) | {w for words in self.association.values() for w in words}
        for item in self.items:
            if item.generative:
                names |= set(item.truth) | set(item.hallu)
        return Vocabulary({n: (n,) for n in sorted(names)})


def _read(path: Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_amber(folder: str | Path) -> AmberSet:
    """Read an AMBER ``data/`` folder (see the module docstring for the files)."""
    folder = Path(folder)
    query_dir = folder / "query"
    candidates = [query_dir / "query_all.json"] if (query_dir / "query_all.json").is_file() else sorted(query_dir.glob("query_*.json"))
    if not candidates:
        raise ValueError(f"{folder}: no query/query_all.json (or query/query_*.json) found")
    queries = {int(q["id"]): q for path in candidates for q in _read(path)}
    raw = _read(folder / "annotations.json")
    annotations = {int(a["id"]): a for a in raw} if raw and "id" in raw[0] else {i + 1: a for i, a in enumerate(raw)}
    items = []
    for qid in sorted(queries):
        q, a = queries[qid], annotations.get(qid)
        if a is None:
            raise ValueError(f"{folder}: query {qid} has no annotation")
        truth = a["truth"]
        truth = tuple(str(t).lower() for t in truth) if a["type"] == "generative" else str(truth).strip().lower()
        items.append(AmberItem(qid, str(q["image"]), str(q["query"]), str(a["type"]), truth,
                               tuple(str(h).lower() for h in a.get("hallu", ()))))  # fmt: skip
    relation = folder / "relation.json"
    association = {str(k).lower(): [str(w).lower() for w in v] for k, v in _read(relation).items()} if relation.is_file() else {}
    safe = folder / "safe_words.txt"
    safe_words = frozenset(w.strip().lower() for w in safe.read_text(encoding="utf-8").splitlines() if w.strip()) if safe.is_file() else frozenset()
    return AmberSet(items, association, safe_words)


def _entries(objects: Sequence[str], association: dict[str, list[str]]) -> dict[str, int]:
    """Word -> the entry (index into ``objects``) it names: associated words first, then the
    entries themselves, the first match winning (the release script's order)."""
    order = [(w, i) for i, o in enumerate(objects) for w in association.get(o, ())] + [(o, i) for i, o in enumerate(objects)]
    first: dict[str, int] = {}
    for word, index in order:
        first.setdefault(word, index)
    return first


def description_details(description: str, item: AmberItem, data: AmberSet, vocabulary: Vocabulary | None = None) -> dict:
    """The vocabulary words one description names (every occurrence, in order), which are
    hallucinated, the ``truth`` and ``hallu`` entries they name, and the counts of :data:`COUNTS`."""
    vocabulary = vocabulary or data.vocabulary()
    named = [m.category for m in vocabulary.mentions(description)]
    truth, hallu = _entries(item.truth, data.association), _entries(item.hallu, data.association)
    covered, cognitive, hallucinated = set(), set(), []
    for word in named:
        if word in data.safe_words:
            continue
        if word in truth:
            covered.add(truth[word])
            continue
        if word in hallu:
            cognitive.add(hallu[word])
        hallucinated.append(word)
    return {
        "objects": named, "hallucinated": hallucinated,
        "covered": [item.truth[i] for i in sorted(covered)], "cognitive": [item.hallu[i] for i in sorted(cognitive)],
        "counts": [len(named), len(hallucinated), int(bool(hallucinated)), len(item.truth), len(covered),
                   len(item.hallu), len(cognitive), 1],
    }  # fmt: skip


def generative_from_counts(sums: np.ndarray) -> dict[str, np.ndarray]:
    sums = np.asarray(sums, float)
    named, hallucinated, any_h, truth, covered, hallu, cognitive, n = (sums[..., i] for i in range(len(COUNTS)))
    return {"CHAIR": ratio(hallucinated, named), "Cover": ratio(covered, truth), "Hal": ratio(any_h, n),
            "Cog": ratio(cognitive, hallu)}  # fmt: skip


def generative(descriptions: Sequence[str], items: Sequence[AmberItem], data: AmberSet) -> tuple[dict[str, float], list[dict]]:
    """AMBER's generative metrics and per-description details."""
    vocabulary = data.vocabulary()
    details = [description_details(d, i, data, vocabulary) for d, i in zip(descriptions, items)]
    counts = np.array([d["counts"] for d in details], float).reshape(len(details), len(COUNTS))
    return {k: float(v) for k, v in generative_from_counts(counts.sum(0)).items()}, details


def answer_counts(answers: Sequence[str], items: Sequence[AmberItem], parse: Parser = parse_yes_no) -> list[int]:
    """:data:`QA_COUNTS` of a group of yes/no answers."""
    correct = answered_no = correct_no = truth_no = unparsed = 0
    for answer, item in zip(answers, items, strict=True):
        said = parse(answer)
        no = item.truth == "no"
        unparsed += said is None
        answered_no += said is False
        truth_no += no
        correct += said is not None and said != no
        correct_no += said is False and no
    return [correct, answered_no, correct_no, truth_no, len(items), unparsed]


def discriminative_matrix(answers: Sequence[str], items: Sequence[AmberItem], parse: Parser = parse_yes_no) -> tuple[list[str], np.ndarray]:
    """Images (in first-seen order) and ``[n_images, len(QA_COUNTS)]`` (the bootstrap's units)."""
    rows = list(zip(answers, items, strict=True))
    return per_unit([i.image for i in items], rows, lambda group: answer_counts(*zip(*group), parse), len(QA_COUNTS))


def discriminative_from_counts(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, and precision / recall / F1 with "no" positive, from :data:`QA_COUNTS` sums."""
    sums = np.asarray(sums, float)
    correct, answered_no, correct_no, truth_no, n, unparsed = (sums[..., i] for i in range(len(QA_COUNTS)))
    precision, recall = ratio(correct_no, answered_no), ratio(correct_no, truth_no)
    return {"accuracy": ratio(correct, n), "precision": precision, "recall": recall,
            "F1": ratio(2 * precision * recall, precision + recall), "unparsed": ratio(unparsed, n)}  # fmt: skip


def discriminative(answers: Sequence[str], items: Sequence[AmberItem], parse: Parser = parse_yes_no) -> dict[str, float]:
    """AMBER's discriminative metrics of answers to ``items`` (one answer each)."""
    return {k: float(v) for k, v in discriminative_from_counts(np.array(answer_counts(answers, items, parse), float)).items()}
