"""The shapes world in the benchmarks' file formats, so that ``adapt-hooks eval`` can run on the
evidence benchmark's own scenes (one pipeline, two entry points).

:func:`export_coco` writes the scenes as PNG files (lossless: the same pixels), an instances file
whose categories are the world's kinds (``"red circle"``, ...), one box per drawn object, and,
given yes/no questions, a POPE question file in the released format with the shapes model's own
question wording (``"is there a red circle ?"``). Run it with ``--model shapes --vocabulary
categories --prompt "describe :"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..shapes import text, world


def export_coco(scenes: Sequence[world.Scene], folder: str | Path, *, questions: Sequence[tuple[int, int, bool]] = (),
                split: str = "adversarial") -> Path:  # fmt: skip
    """Write ``scenes`` to ``folder`` in COCO format (``annotations/instances_shapes.json`` and
    ``images/``), and ``questions`` — ``(scene index, kind, label)`` — to ``pope/shapes_pope_{split}.json``."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": world.kind_name(k)} for k in range(world.N_KINDS)]
    images, annotations = [], []
    for n, scene in enumerate(scenes):
        name = f"shapes_{n:06d}.png"
        scene.image().save(folder / "images" / name)
        images.append({"id": n + 1, "file_name": name, "width": world.IMAGE_SIZE, "height": world.IMAGE_SIZE})
        for kind, (cx, cy, r) in zip(scene.visible, scene.places):
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1, "category_id": kind + 1,
                                "bbox": [cx - r, cy - r, 2 * r, 2 * r], "area": 4 * r * r, "iscrowd": 0})  # fmt: skip
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations" / "instances_shapes.json").write_text(json.dumps(instances), encoding="utf-8")
    if questions:
        (folder / "pope").mkdir(exist_ok=True)
        rows = [{"question_id": i + 1, "image": images[s]["file_name"], "text": text.question(k), "label": "yes" if y else "no"}
                for i, (s, k, y) in enumerate(questions)]  # fmt: skip
        (folder / "pope" / f"shapes_pope_{split}.json").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return folder
