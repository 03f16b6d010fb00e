"""Why the guard does (or does not) help: where the anchor lands, and what the drift gate sees at
the steps that name a hallucinated object."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapt_hooks.shapes import text, world
from adapt_hooks.shapes.text import mention_steps

from . import metrics
from .evaluate import Descriptions
from adapt_hooks.shapes.world import Scene


def mass_lift(values: np.ndarray, mask: np.ndarray) -> float:
    """Share of ``values``' mass on ``mask`` divided by the share of area ``mask`` covers
    (1 = no better than uniform)."""
    total = values.sum()
    if total <= 0 or not mask.any():
        return float("nan")
    return float((values * mask).sum() / total / mask.mean())


def anchor_quality(desc: Descriptions, scenes: Sequence[Scene]) -> dict[str, float]:
    """How much more of each map's mass lies on object patches than a uniform map would put
    there: the refined anchor, the fused map, each hooked layer's anchor-phase map; also on the
    first object the caption names (the object the anchor phase looks at), on the paired kind that
    is present (the A or B whose missing partner gets hallucinated), and the share of
    scene objects the refined anchor covers (maximum weight over the object's patches >= 0.5)."""
    grid = text.GRID
    rows: dict[str, list[float]] = {
        "refined anchor": [], "fused map": [], "first named object (refined)": [],
        "paired object present (refined)": [], "objects covered": [],
    }
    n_layers = desc.maps[0].shape[0] if desc.maps else 0
    for layer in range(n_layers):
        rows[f"layer {layer} map"] = []
    for b, scene in enumerate(scenes):
        if b >= len(desc.anchors):
            break
        mask = world.object_mask(scene, grid)
        weights = desc.anchors[b].numpy().reshape(grid, grid)
        rows["refined anchor"].append(mass_lift(weights, mask))
        rows["fused map"].append(mass_lift(desc.fused[b].numpy().reshape(grid, grid), mask))
        for layer in range(n_layers):
            rows[f"layer {layer} map"].append(mass_lift(desc.maps[b][layer].numpy().reshape(grid, grid), mask))
        named = [k for k in _named_order(desc.ids[b]) if k in scene.objects]
        if named:
            rows["first named object (refined)"].append(mass_lift(weights, world.object_mask(scene, grid, named[0])))
        paired = [k for k in scene.kinds if k in world.PARTNER_OF]
        if paired:
            rows["paired object present (refined)"].append(mass_lift(weights, world.object_mask(scene, grid, paired[0])))
        covered = [weights[world.object_mask(scene, grid, k)].max() >= 0.5 for k in scene.kinds]
        rows["objects covered"].append(float(np.mean(covered)))
    return {name: float(np.nanmean(v)) if v else float("nan") for name, v in rows.items()}


def _named_order(ids: Sequence[int]) -> list[int]:
    """Kinds in the order a caption names them."""
    words = [text.VOCAB[i] for i in ids]
    order = []
    for a, b in zip(words, words[1:]):
        if (a, b) in world.KINDS and world.KINDS.index((a, b)) not in order:
            order.append(world.KINDS.index((a, b)))
    return order


def gate_at_mentions(desc: Descriptions, scenes: Sequence[Scene], tau: float, k: int) -> dict[str, float]:
    """At the decode step that predicts each mention's colour word (after the anchor phase):
    mean normalised AMC over layers, share of layers whose AMC is below ``tau`` (the gate), and
    the share of layers actually steered — for hallucinated and for correct mentions."""
    out: dict[str, list[float]] = {f"{what} {kind}": [] for what in ("amc", "below tau", "steered") for kind in ("hallucinated", "correct")}
    for b, scene in enumerate(scenes):
        amc = desc.amc_at[b]
        steered = desc.steered_at[b] if desc.steered_at else None
        for j, kind in mention_steps(desc.ids[b]):
            step = j - 1  # history row i predicts generated token i + 1
            if step < k or step >= amc.shape[0]:
                continue
            label = "correct" if kind in scene.objects else "hallucinated"
            out[f"amc {label}"].append(float(np.nanmean(amc[step])))
            out[f"below tau {label}"].append(float(np.mean(amc[step] < tau)))
            if steered is not None:
                out[f"steered {label}"].append(float(steered[step]))
    result = {name: float(np.mean(v)) if v else float("nan") for name, v in out.items()}
    result["n hallucinated"] = len(out["amc hallucinated"])
    result["n correct"] = len(out["amc correct"])
    return result


#: Each signal at the step that predicts a mention, oriented so that a higher value means a
#: higher risk that the mention is hallucinated (the direction each signal's story predicts).
RISK_SIGNALS = (
    "AMC (anchor-normalised), low", "visual mass, low", "visual mass ÷ anchor phase, low", "HHI, low",
    "change rate, high", "token probability, low",
)


def mention_signals(desc: Descriptions, scenes: Sequence[Scene], k: int) -> list[tuple[bool, dict[str, float]]]:
    """``(hallucinated, risks)`` of every kind mention after the anchor phase: the monitored
    signals (mean over layers) at the decode step that predicts the mention's colour word (every
    kind has its own colour, so that word decides the kind), and the model's probability of it."""
    out = []
    for b, scene in enumerate(scenes):
        if b >= len(desc.amc_at):
            break
        amc, mass, hhi, change = desc.amc_at[b], desc.mass_at[b], desc.hhi_at[b], desc.change_at[b]
        anchor_mass = mass[:k].mean(0)
        for j, kind in mention_steps(desc.ids[b]):
            step = j - 1  # history row i predicts generated token i + 1
            if step < k or step >= amc.shape[0]:
                continue
            risks = dict(zip(RISK_SIGNALS, (
                -float(np.nanmean(amc[step])), -float(mass[step].mean()),
                -float(np.mean(mass[step] / np.maximum(anchor_mass, 1e-12))), -float(hhi[step].mean()),
                float(change[step].mean()), -float(desc.prob_at[b][j]),
            )))  # fmt: skip
            out.append((kind not in scene.objects, risks))
    return out


def signal_auroc(mentions: list[tuple[bool, dict[str, float]]]) -> dict[str, float]:
    """AUROC of each risk signal for telling hallucinated from correct mentions (0.5: no better
    than chance; below 0.5: the signal points the other way), and the counts."""
    result = {}
    for name in RISK_SIGNALS:
        positive = [r[name] for bad, r in mentions if bad]
        negative = [r[name] for bad, r in mentions if not bad]
        result[name] = metrics.auroc(positive, negative)
    result["n hallucinated"] = sum(bad for bad, _ in mentions)
    result["n correct"] = sum(not bad for bad, _ in mentions)
    return result


# -- the early warning ---------------------------------------------------------------------------
def risk_examples(desc: Descriptions, scenes: Sequence[Scene]) -> list[dict]:
    """``adapt_hooks.fit_risk`` examples from plain descriptions: each mention's colour word is
    labelled 1 (hallucinated) or 0 (correct), every other token ignored."""
    from . import batches

    examples = []
    for scene, ids in zip(scenes, desc.ids):
        labels = np.full(len(ids), -1)
        for j, kind in mention_steps(ids):
            labels[j] = int(kind not in scene.objects)
        examples.append(dict(inputs=batches.prompts([text.DESCRIBE], [scene]), tokens=list(ids), labels=labels))
    return examples


def mention_risks(desc: Descriptions, scenes: Sequence[Scene], k: int) -> list[tuple[bool, float]]:
    """``(hallucinated, risk)`` at each mention's colour word after the anchor phase."""
    out = []
    for b, scene in enumerate(scenes):
        for j, kind in mention_steps(desc.ids[b]):
            if k <= j - 1 < len(desc.risk_at[b]):
                out.append((kind not in scene.objects, float(desc.risk_at[b][j - 1])))
    return out


def youden_threshold(mentions: list[tuple[bool, float]]) -> float:
    """The risk threshold that maximises true-positive rate minus false-positive rate."""
    positive = np.array([r for bad, r in mentions if bad])
    negative = np.array([r for bad, r in mentions if not bad])
    candidates = np.unique(np.concatenate([positive, negative]))
    j = [(positive > t).mean() - (negative > t).mean() for t in candidates]
    return float(candidates[int(np.argmax(j))])


def warning_quality(desc: Descriptions, scenes: Sequence[Scene], k: int, threshold: float) -> dict[str, float]:
    """How the risk (and each signal alone) tells hallucinated from correct mentions — AUROC and
    AUPRC — and, at ``threshold``: the share of hallucinated mentions flagged at or before their
    colour word, how many tokens before it the first flag came (among the flagged), the share of
    correct mentions flagged at their own word, and the share of captions without a hallucination
    flagged at any of their (monitored) mentions."""
    signals = mention_signals(desc, scenes, k)
    risks = mention_risks(desc, scenes, k)
    result: dict[str, float] = {}
    for name in (*RISK_SIGNALS, "risk (combined)"):
        if name == "risk (combined)":
            positive, negative = [r for bad, r in risks if bad], [r for bad, r in risks if not bad]
        else:
            positive = [r[name] for bad, r in signals if bad]
            negative = [r[name] for bad, r in signals if not bad]
        result[f"AUROC {name}"] = metrics.auroc(positive, negative)
        result[f"AUPRC {name}"] = metrics.average_precision(positive, negative)
    leads, flagged, correct_flags, clean_flags = [], [], [], []
    for b, scene in enumerate(scenes):
        risk, ids = desc.risk_at[b], desc.ids[b]
        mentions = [(j, kind) for j, kind in mention_steps(ids) if k <= j - 1 < len(risk)]
        bad = [j for j, kind in mentions if kind not in scene.objects]
        for j in bad:
            passed = [t for t in range(k + 1, j + 1) if risk[t - 1] > threshold]
            flagged.append(bool(passed))
            if passed:
                leads.append(j - passed[0])
        correct_flags += [bool(risk[j - 1] > threshold) for j, kind in mentions if kind in scene.objects]
        if mentions and not bad:
            clean_flags.append(any(risk[j - 1] > threshold for j, _ in mentions))
    result["hallucinations flagged"] = float(np.mean(flagged)) if flagged else float("nan")
    result["tokens of warning (flagged)"] = float(np.mean(leads)) if leads else float("nan")
    result["correct mentions flagged"] = float(np.mean(correct_flags)) if correct_flags else float("nan")
    result["clean captions flagged"] = float(np.mean(clean_flags)) if clean_flags else float("nan")
    result["n hallucinated"] = float(len(flagged))
    return result
