"""The synthetic world: object kinds, correlated co-occurrence, scene sampling and drawing.

A scene is 2-4 objects (a colour and a shape each) on a 48 x 48 dark canvas, one per cell of a
jittered 3 x 3 grid, with colour jitter and Gaussian pixel noise. Two *partner* pairs carry the
language prior: in the training distribution a partner ``B`` appears beside its ``A`` in 95 % of
scenes and on its own in only 5 %. As in real caption data, a training caption sometimes names an
object the image does not show (occluded, out of frame): each object of a training scene is left
undrawn with probability 6 %. Held-out scenes draw every object. Every kind has its own colour, so no kind is a lookalike of
another (two kinds sharing a colour get confused for reasons that have nothing to do with
co-occurrence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 48
CELL = IMAGE_SIZE // 3
BACKGROUND = (20, 20, 20)

#: (colour, shape) of each kind; the index is the kind id and the canonical caption order.
KINDS: tuple[tuple[str, str], ...] = (
    ("red", "circle"),       # 0  A of pair 1
    ("blue", "square"),      # 1  B of pair 1
    ("green", "triangle"),   # 2  A of pair 2
    ("yellow", "diamond"),   # 3  B of pair 2
    ("white", "ring"),       # 4
    ("purple", "cross"),     # 5
    ("orange", "triangle"),  # 6
    ("cyan", "circle"),      # 7
)
N_KINDS = len(KINDS)
#: Partner pairs ``A -> B``: B almost always appears beside A, and rarely without it.
PAIRS: dict[int, int] = {0: 1, 2: 3}
PARTNERS = frozenset(PAIRS.values())
ANCHORS = frozenset(PAIRS)
PARTNER_OF: dict[int, int] = {**PAIRS, **{b: a for a, b in PAIRS.items()}}
#: Kinds outside every pair.
NEUTRAL: tuple[int, ...] = tuple(k for k in range(N_KINDS) if k not in PARTNER_OF)

RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "blue": (50, 80, 240), "green": (40, 200, 60), "yellow": (235, 225, 40),
    "white": (240, 240, 240), "purple": (170, 60, 220), "orange": (245, 140, 20), "cyan": (40, 220, 230),
}

#: P(B | A) and P(B | not A) of the training distribution.
P_PARTNER_WITH_ANCHOR = 0.95
P_PARTNER_ALONE = 0.05
MIN_OBJECTS, MAX_OBJECTS = 2, 4
PIXEL_NOISE = 12.0
#: Probability that an object of a training scene is named by its caption but not drawn.
P_HIDDEN = 0.06


def kind_name(kind: int) -> str:
    """``"red circle"``."""
    colour, shape = KINDS[kind]
    return f"{colour} {shape}"


@dataclass(frozen=True)
class Scene:
    """One scene: its kinds (what the caption names), the rendered RGB image ``uint8 [H, W, 3]``,
    each drawn object's ``(cx, cy, r)`` in pixels (in the order of :attr:`visible`) and the kinds
    named but not drawn (training scenes only)."""

    kinds: tuple[int, ...]
    pixels: np.ndarray
    places: tuple[tuple[int, int, int], ...] = ()
    hidden: frozenset[int] = frozenset()

    @property
    def visible(self) -> tuple[int, ...]:
        return tuple(k for k in self.kinds if k not in self.hidden)

    @property
    def objects(self) -> frozenset[int]:
        return frozenset(self.kinds)

    def image(self) -> Image.Image:
        return Image.fromarray(self.pixels, mode="RGB")


def sample_training_kinds(
    rng: np.random.Generator, p_with: float = P_PARTNER_WITH_ANCHOR, p_alone: float = P_PARTNER_ALONE
) -> tuple[int, ...]:
    """Kinds of one scene of the training distribution.

    2-4 kinds are drawn without replacement from the non-partner kinds (anchors and neutrals);
    then each partner B is added with probability ``p_with`` if its A is present, else ``p_alone``.
    A full scene makes room by replacing a random object that is neither an A nor a partner.
    """
    pool = [k for k in range(N_KINDS) if k not in PARTNERS]
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    kinds = [int(k) for k in rng.choice(pool, size=n, replace=False)]
    for a, b in PAIRS.items():
        if rng.random() < (p_with if a in kinds else p_alone):
            if len(kinds) < MAX_OBJECTS:
                kinds.append(b)
                continue
            replaceable = [i for i, k in enumerate(kinds) if k not in ANCHORS and k not in PARTNERS]
            if replaceable:
                kinds[replaceable[int(rng.integers(len(replaceable)))]] = b
    return tuple(kinds)


def sample_decorrelated_kinds(rng: np.random.Generator, present: int) -> tuple[int, ...]:
    """Kinds of a held-out scene that breaks a correlation: ``present`` (an A or a B) without its
    partner, with 1-3 neutral kinds beside it."""
    n_others = int(rng.integers(MIN_OBJECTS - 1, MAX_OBJECTS))
    others = [int(k) for k in rng.choice(NEUTRAL, size=n_others, replace=False)]
    kinds = [present, *others]
    rng.shuffle(kinds)
    return tuple(kinds)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, rgb: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx - r, cy), (cx, cy + r), (cx + r, cy)], fill=rgb)
    elif shape == "cross":
        w = max(1, r // 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=rgb)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=rgb)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=rgb, width=2)
    else:  # pragma: no cover - KINDS only uses the shapes above
        raise ValueError(f"unknown shape {shape!r}")


def draw_scene(
    kinds: tuple[int, ...], rng: np.random.Generator, noise: float = PIXEL_NOISE
) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...]]:
    """Render ``kinds`` into one distinct cell each of a jittered 3 x 3 grid: ``uint8 [48, 48, 3]``
    and each object's ``(cx, cy, r)``."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cells = rng.choice(9, size=len(kinds), replace=False)
    places = []
    for kind, cell in zip(kinds, cells):
        colour, shape = KINDS[kind]
        jitter = rng.integers(-3, 4, size=3)
        rgb = tuple(int(np.clip(v + j * 6, 0, 255)) for v, j in zip(RGB[colour], jitter))
        r = int(rng.integers(5, 8))
        cx = int(cell % 3) * CELL + CELL // 2 + int(rng.integers(-2, 3))
        cy = int(cell // 3) * CELL + CELL // 2 + int(rng.integers(-2, 3))
        _draw_shape(draw, shape, cx, cy, r, rgb)
        places.append((cx, cy, r))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, noise, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), tuple(places)


def training_scenes(rng: np.random.Generator, n: int, p_hidden: float = 0.0) -> list[Scene]:
    """``n`` scenes of the training distribution; each object is left undrawn with probability
    ``p_hidden`` (at least one object is always drawn). Training uses :data:`P_HIDDEN`; held-out
    scenes use 0."""
    scenes = []
    for _ in range(n):
        kinds = sample_training_kinds(rng)
        hidden = frozenset(k for k in kinds if rng.random() < p_hidden) if p_hidden else frozenset()
        if len(hidden) == len(kinds):
            hidden = frozenset()
        visible = tuple(k for k in kinds if k not in hidden)
        scenes.append(Scene(kinds, *draw_scene(visible, rng), hidden=hidden))
    return scenes


def decorrelated_scenes(rng: np.random.Generator, n_per_kind: int) -> list[Scene]:
    """Held-out scenes that break every correlation: ``n_per_kind`` scenes for each paired kind
    (each A without its B, each B without its A)."""
    scenes = []
    for present in sorted(PARTNER_OF):
        for _ in range(n_per_kind):
            kinds = sample_decorrelated_kinds(rng, present)
            scenes.append(Scene(kinds, *draw_scene(kinds, rng)))
    return scenes


def object_mask(scene: Scene, grid: int, kind: int | None = None) -> np.ndarray:
    """``bool [grid, grid]``: patches whose square overlaps an object's bounding box (only
    ``kind``'s object when given)."""
    patch = IMAGE_SIZE / grid
    mask = np.zeros((grid, grid), dtype=bool)
    for k, (cx, cy, r) in zip(scene.visible, scene.places):
        if kind is not None and k != kind:
            continue
        rows = range(max(0, int((cy - r) // patch)), min(grid, int((cy + r) // patch) + 1))
        cols = range(max(0, int((cx - r) // patch)), min(grid, int((cx + r) // patch) + 1))
        for i in rows:
            mask[i, cols.start : cols.stop] = True
    return mask


def missing_partner(scene: Scene) -> int | None:
    """The partner that a decorrelated scene lacks (the adversarial POPE object), if any."""
    for kind in scene.kinds:
        partner = PARTNER_OF.get(kind)
        if partner is not None and partner not in scene.objects:
            return partner
    return None


def cooccurrence_stats(kind_sets: list[tuple[int, ...]]) -> dict[str, dict[str, float]]:
    """Per pair ``A -> B``: P(B | A), P(B | not A), P(A | B) and P(B) over ``kind_sets``."""
    stats = {}
    for a, b in PAIRS.items():
        with_a = [b in ks for ks in kind_sets if a in ks]
        without_a = [b in ks for ks in kind_sets if a not in ks]
        with_b = [a in ks for ks in kind_sets if b in ks]
        stats[f"{kind_name(a)} -> {kind_name(b)}"] = {
            "P(B|A)": float(np.mean(with_a)) if with_a else float("nan"),
            "P(B|not A)": float(np.mean(without_a)) if without_a else float("nan"),
            "P(A|B)": float(np.mean(with_b)) if with_b else float("nan"),
            "P(B)": float(np.mean([b in ks for ks in kind_sets])),
        }
    return stats
