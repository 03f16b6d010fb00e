"""AMBER (Wang et al., 2023): generative and discriminative hallucination on its released files.

Files read, from the ``data/`` folder of the AMBER release (only the fields named here):

* ``query/query_all.json`` (or ``query_generative.json`` / ``query_discriminative.json``): a JSON
  list of ``{"id", "image", "query"}``;
* ``annotations.json``: a JSON list indexed by the same ``id`` (1-based, ``annotations[id - 1]``,
  or matched by an ``"id"`` field when present) of ``{"type", "truth", "hallu"?}``: for
  ``"type": "generative"``, ``truth`` lists the objects in the image and ``hallu`` the objects a
  hallucinating description is likely to name; for ``"discriminative-..."`` types
  (``-hallucination`` for existence, ``-attribute-state`` / ``-number`` / ``-action``,
  ``-relation``) ``truth`` is ``"yes"`` or ``"no"``;
* ``relation.json`` (optional): ``{object: [associated words]}``; a named word associated with
  a true object is not counted as hallucinated.

Generative metrics, over descriptions; an object is a word or phrase of AMBER's object
vocabulary (every ``truth``/``hallu`` word of the generative annotations, plus the association
words), found with this package's phrase matcher (longest phrase first, plurals included) rather
than the release script's noun extraction, so figures can differ from it slightly:

* ``CHAIR`` = named objects not in the image / named objects;
* ``Cover`` = true objects named / true objects;
* ``Hal`` = descriptions with at least one hallucinated object / descriptions;
* ``Cog`` = named objects that are in ``hallu`` (the likely hallucinations) / named objects.

Discriminative tasks: the answers are parsed like POPE's (first standalone yes/no) and scored
with "yes" as positive, per family (existence, attribute, relation) and all together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .coco import Vocabulary
from .stats import ratio

#: Per-description counts, in this order.
COUNTS = ("named", "hallucinated", "any_hallucinated", "truth", "covered", "cognitive", "descriptions")
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

    def vocabulary(self) -> Vocabulary:
        """Each AMBER object word is its own category."""
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
    return AmberSet(items, association)


def description_details(description: str, item: AmberItem, vocabulary: Vocabulary,
                        association: Mapping[str, Sequence[str]] | None = None) -> dict:  # fmt: skip
    """The objects one description names, which are hallucinated / cognitive / covered, and the
    counts of :data:`COUNTS`."""
    truth = set(item.truth)
    supported = set(truth)
    for t in truth:
        supported |= set((association or {}).get(t, ()))
    named = sorted(vocabulary.objects(description))
    hallucinated = [w for w in named if w not in supported]
    cognitive = [w for w in named if w in set(item.hallu) and w not in supported]
    covered = sorted(set(named) & truth)
    return {
        "objects": named, "hallucinated": hallucinated, "cognitive": cognitive, "covered": covered,
        "counts": [len(named), len(hallucinated), int(bool(hallucinated)), len(truth), len(covered), len(cognitive), 1],
    }


def generative_from_counts(sums: np.ndarray) -> dict[str, np.ndarray]:
    sums = np.asarray(sums, float)
    named, hallucinated, any_h, truth, covered, cognitive, n = (sums[..., i] for i in range(len(COUNTS)))
    return {"CHAIR": ratio(hallucinated, named), "Cover": ratio(covered, truth), "Hal": ratio(any_h, n),
            "Cog": ratio(cognitive, named)}  # fmt: skip


def generative(descriptions: Sequence[str], items: Sequence[AmberItem], data: AmberSet) -> tuple[dict[str, float], list[dict]]:
    """AMBER's generative metrics and per-description details."""
    vocabulary = data.vocabulary()
    details = [description_details(d, i, vocabulary, data.association) for d, i in zip(descriptions, items)]
    counts = np.array([d["counts"] for d in details], float).reshape(len(details), len(COUNTS))
    return {k: float(v) for k, v in generative_from_counts(counts.sum(0)).items()}, details
