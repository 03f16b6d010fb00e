"""``adapt-hooks demo``: the shipped shapes VLM names an object that is not in the picture, the
early-warning risk watches it happen word by word, and the guard and VCD answer the same scene.

Nothing is chosen by hand: among held-out scenes that show one object of a partner pair without
its partner, the demo takes the first one whose plain caption names an absent object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..anchor import Anchor
from ..methods.vcd import VCD
from ..monitor import DriftMonitor
from ..prompts import chat_prompt
from ..running import guarded_generate
from ..viz.report import drift_table, enlarge, write_pictures
from . import text, world
from .model import load_model, load_processor, load_risk, n_parameters

#: Held-out scenes drawn per paired kind (each A without its B, each B without its A).
SCENES_PER_KIND = 8
QUESTION = text.DESCRIBE


@dataclass(frozen=True)
class Caption:
    """A generated caption: its token ids (up to ``</s>``) and the kinds it names that the scene lacks."""

    ids: list[int]
    absent: list[int]

    @classmethod
    def of(cls, ids: list[int], scene: world.Scene) -> Caption:
        ids = text.trim(ids)
        return cls(ids, [kind for _, kind in text.mention_steps(ids) if kind not in scene.objects])

    @property
    def words(self) -> str:
        return text.decode(self.ids)

    def verdict(self) -> str:
        named = ", ".join(world.kind_name(k) for k in self.absent)
        return f"names a {named}, which is not in the picture" if self.absent else "names only what is in the picture"


def _inputs(processor, scenes: list[world.Scene]) -> dict[str, torch.Tensor]:
    prompt = chat_prompt(processor, QUESTION)
    return dict(processor(images=[s.image() for s in scenes], text=[prompt] * len(scenes), return_tensors="pt"))


def pick_scene(model, processor, seed: int, max_new_tokens: int) -> tuple[list[world.Scene], int | None]:
    """The held-out scenes of ``seed`` and the index of the first whose plain (unguarded, greedy)
    caption names an absent object (``None`` when none does)."""
    scenes = world.decorrelated_scenes(np.random.default_rng(seed), SCENES_PER_KIND)
    inputs = _inputs(processor, scenes)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    captions = [Caption.of(ids, s) for ids, s in zip(out[:, inputs["input_ids"].shape[1] :].tolist(), scenes)]
    return scenes, next((i for i, c in enumerate(captions) if c.absent), None)


def main(seed: int = 0, k: int = 5, tau: float = 0.6, alpha: float = 0.5, steer: bool = True, max_new_tokens: int = 24,
         out: Path = Path("adapt-hooks-out"), say: Callable[[str], None] = print) -> list[Path]:  # fmt: skip
    """Run the demo, print what it finds with ``say`` and return the pictures written to ``out``."""
    from .. import __version__

    DriftMonitor(tau, alpha)  # refuses bad settings before the model loads
    model, processor = load_model(attn_implementation="sdpa"), load_processor()
    risk = load_risk(model)
    threshold = float(risk.meta.get("threshold", 0.5))
    scenes, index = pick_scene(model, processor, seed, max_new_tokens)
    pair = ", ".join(f"a {world.kind_name(b)} beside almost every {world.kind_name(a)}" for a, b in world.PAIRS.items())
    say(f"adapt-hooks {__version__} demo: the shapes VLM shipped with the package ({n_parameters(model) / 1e6:.2f} M parameters, "
        f"no download), trained on captions with {pair}.")  # fmt: skip
    if index is None:
        index = 0
        say(f"None of the {len(scenes)} held-out scenes of seed {seed} made the plain model name an absent object; showing scene 1.")
    scene = scenes[index]
    say(f"Scene {index + 1} of {len(scenes)} (seed {seed}) shows: {', '.join(world.kind_name(k) for k in sorted(scene.kinds))}.")

    inputs = _inputs(processor, [scene])
    monitor = DriftMonitor(tau, alpha, steer=False, risk=risk)
    ids, run = guarded_generate(model, inputs, max_new_tokens, monitor, Anchor(k=k))
    plain = Caption.of(ids[0].tolist(), scene)
    words = [text.VOCAB[i] for i in ids[0].tolist()]
    say(f'\nAsked "{QUESTION}", the plain model answers:\n  {plain.words}\n  -> it {plain.verdict()}.')
    # The colour word at index j of the answer is the token that decode step j generates.
    notes = {j: f"<- {world.kind_name(kind)}: not in the picture" for j, kind in text.mention_steps(plain.ids) if kind not in scene.objects}
    wrong = set(notes)
    say(f"\nWord by word, watched by the early-warning risk fitted for this model (! = above its threshold {threshold:.3f}; "
        f"the first word comes from the prefill, steps 1-{k} are the anchor phase):")  # fmt: skip
    say(drift_table(run, words[1:], threshold=threshold, notes=notes))
    say(_lead(run.monitor.risk[:, 0], wrong, threshold, k, words))

    if steer:
        say(f'\nThe same scene under each decoding method ("{QUESTION}", greedy):')
        steered_ids, steered = guarded_generate(model, inputs, max_new_tokens, DriftMonitor(tau, alpha), Anchor(k=k))
        vcd_ids, _ = guarded_generate(model, inputs, max_new_tokens, methods=[VCD()])
        rows = [("plain", plain, ""), (f"guard (ADAPT, tau {tau:g})", Caption.of(steered_ids[0].tolist(), scene),
                f"  [steered {steered.monitor.intervention_rate:.0%} of the monitored cells]"),
                ("VCD (alpha 1)", Caption.of(vcd_ids[0].tolist(), scene), "")]  # fmt: skip
        width = max(len(name) for name, _, _ in rows)
        for name, caption, extra in rows:
            say(f"  {name:<{width}}  {caption.words}\n  {'':<{width}}  -> {caption.verdict()}{extra}")
        say("One scene is an anecdote: how often each method helps over hundreds of such scenes is in docs/evidence.md.")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enlarge(scene.image()).save(out / "scene.png")
    written = [out / "scene.png"]
    written += write_pictures(run, scene.image(), out, say=say, tokens=words[1:], marked=wrong, threshold=threshold)
    for path in written:
        say(f"wrote {path}")
    return written


def _lead(risk: torch.Tensor, wrong: set[int], threshold: float, k: int, words: list[str]) -> str:
    """When the risk first passed its threshold after the anchor phase, relative to the first hallucinated word."""
    if not wrong:
        passed = [t for t in range(k + 1, risk.shape[0] + 1) if risk[t - 1] > threshold]
        return f"The risk passed its threshold at {len(passed)} of the monitored steps of this correct caption."
    first = min(wrong)
    passed = [t for t in range(k + 1, first + 1) if risk[t - 1] > threshold]
    if not passed:
        return f'The risk did not pass its threshold by the hallucinated "{words[first]}" (step {first}): a missed warning.'
    lead = first - passed[0]
    when = "at the hallucinated word itself" if lead == 0 else f"{lead} word(s) before it"
    return f'The risk first passed its threshold at step {passed[0]} ("{words[passed[0]]}"), {when} ("{words[first]}", step {first}).'
