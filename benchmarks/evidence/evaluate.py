"""Running the model on scenes: descriptions and yes/no answers, with or without the guard, and
the benchmark suites built on them (CHAIR on descriptions, POPE on yes/no questions).

Guard telemetry is read from ``run.monitor.history`` and masked to the steps before each row's
``</s>`` (``generate`` keeps stepping finished rows with padding until every row is done, and
those padded steps are not part of any caption).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor

from adapt_hooks.shapes import text, world
from adapt_hooks.shapes.world import KINDS, Scene

from . import batches, metrics

MAX_NEW_TOKENS = 24
BATCH = 128


@dataclass(frozen=True)
class GuardSetting:
    """One guard configuration; ``None`` fields keep the library defaults. ``methods`` builds the
    decoding methods to run instead of the monitor's ADAPT steering (fresh objects per guard)."""

    name: str
    tau: float = 0.6
    alpha: float = 0.5
    k: int = 5
    layers: tuple[int, ...] | None = None
    steering: str = "logprior"
    normalize: str | None = "anchor"
    steer: bool = True
    methods: Callable[[], list] | None = None
    risk: object = None  # an adapt_hooks.RiskModel: the monitor also computes the per-token risk

    def make(self, model):
        monitor = DriftMonitor(
            tau=self.tau, alpha=self.alpha, steer=self.steer, normalize=self.normalize, steering=self.steering, risk=self.risk
        )
        methods = None if self.methods is None else self.methods()
        return adapt_hooks.guard(model, anchor=Anchor(k=self.k), monitor=monitor, layers=self.layers, methods=methods)


#: The paper's defaults (K 5, tau 0.6, alpha 0.5, every layer, log-prior steering): ``guard(model)``.
DEFAULT = GuardSetting("guard (paper defaults)")
#: Observe only: outputs bit-identical to the plain model, with telemetry.
OBSERVE = GuardSetting("observe only", steer=False)
#: The peers' methods with their papers' defaults, and ADAPT combined with VCD.
METHODS = (
    GuardSetting("PAI (α 0.2)", methods=lambda: [adapt_hooks.PAI()]),
    GuardSetting("PAI + CFG (α 0.2, γ 1.1)", methods=lambda: [adapt_hooks.PAI(cfg_gamma=1.1)]),
    GuardSetting("VCD (α 1, β 0.1)", methods=lambda: [adapt_hooks.VCD()]),
    GuardSetting("VCD (α 3, β 0.1)", methods=lambda: [adapt_hooks.VCD(alpha=3.0)]),
    GuardSetting("guard + VCD (α 1)", methods=lambda: [adapt_hooks.ADAPT(), adapt_hooks.VCD()]),
)


@dataclass
class Descriptions:
    """Greedy descriptions of a list of scenes and, under a guard, its masked telemetry."""

    ids: list[list[int]]
    seconds: float = 0.0                  # process time of the generate calls
    steered: float | None = None          # share of monitored (step, layer) cells steered
    visual_mass: float | None = None      # mean image attention mass over monitored steps
    anchor_mass: float | None = None      # the same over the anchor-phase steps
    amc: float | None = None              # mean (anchor-normalised) AMC over monitored steps
    anchors: list[torch.Tensor] = field(default_factory=list)  # refined anchor weights per row
    fused: list[torch.Tensor] = field(default_factory=list)    # fused map before refinement
    maps: list[torch.Tensor] = field(default_factory=list)     # anchor-phase layer maps [L, N]
    steered_at: list[np.ndarray] = field(default_factory=list)  # per row: [steps] steered share over layers
    amc_at: list[np.ndarray] = field(default_factory=list)      # per row: [steps, layers] (normalised) AMC
    mass_at: list[np.ndarray] = field(default_factory=list)     # per row: [steps, layers] visual mass
    hhi_at: list[np.ndarray] = field(default_factory=list)      # per row: [steps, layers] HHI
    change_at: list[np.ndarray] = field(default_factory=list)   # per row: [steps, layers] change rate
    prob_at: list[np.ndarray] = field(default_factory=list)     # per row: [tokens] probability of each generated token
    risk_at: list[np.ndarray] = field(default_factory=list)     # per row: [steps] the monitor's risk (with a risk model)

    @property
    def kinds(self) -> list[set[int]]:
        return [text.mentioned_kinds(i) for i in self.ids]


#: Makes the context manager of a drift injection for a model (``adapt_hooks.stress.inject_drift``), or None.
Drift = Callable[[object], object] | None


@torch.no_grad()
def describe(
    model, scenes: Sequence[Scene], setting: GuardSetting | None = None, batch_size: int = BATCH, *,
    drift: Drift = None, probabilities: bool = False,
) -> Descriptions:  # fmt: skip
    """Greedy descriptions (``"describe :"``), optionally inside ``setting``'s guard, under
    ``drift`` (entered outside the guard), recording each generated token's probability when asked."""
    out = Descriptions(ids=[])
    steered_cells = monitored_cells = 0
    masses, anchor_masses, scores = [], [], []
    scored = dict(output_scores=True, return_dict_in_generate=True) if probabilities else {}
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        inputs = batches.prompts([text.DESCRIBE] * len(chunk), chunk)
        guard = setting.make(model) if setting is not None else nullcontext()
        injection = drift(model) if drift is not None else nullcontext()
        start = time.process_time()
        with injection, guard as run:
            generated = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, **scored)
        out.seconds += time.process_time() - start
        if probabilities:
            new = generated.sequences[:, inputs["input_ids"].shape[1] :]
            probs = torch.stack([torch.softmax(s.float(), -1) for s in generated.scores], 1)  # [B, T, V]
            out.prob_at += list(probs.gather(-1, new[..., None])[..., 0].numpy())
            generated = generated.sequences
        rows = [text.trim(r) for r in generated[:, inputs["input_ids"].shape[1] :].tolist()]
        out.ids += rows
        if setting is None:
            continue
        history = run.monitor.history
        k = setting.k
        for b, row in enumerate(rows):
            # Decode step i+1 (history row i) predicts generated token i+1 (0-based); the caption
            # ends with </s> at index len(row).
            steps = min(len(row), history["visual_mass"].shape[0])
            mass = history["visual_mass"][:steps, :, b]
            anchor_masses.append(float(mass[:k].mean()))
            if steps > k:
                masses.append(float(mass[k:].mean()))
                scores.append(float(history["amc"][k:steps, :, b].nanmean()))
                gate = history["steered"][k:steps, :, b]
                steered_cells += float(gate.sum())
                monitored_cells += gate.numel()
            out.steered_at.append(history["steered"][:steps, :, b].mean(-1).numpy())
            out.amc_at.append(history["amc"][:steps, :, b].numpy())
            out.mass_at.append(history["visual_mass"][:steps, :, b].numpy())
            out.hhi_at.append(history["hhi"][:steps, :, b].numpy())
            out.change_at.append(history["change_rate"][:steps, :, b].numpy())
            if run.monitor.risk is not None:
                out.risk_at.append(run.monitor.risk[:steps, b].numpy())
            if run.anchor.weights is not None:
                out.anchors.append(run.anchor.weights[b].clone())
                out.fused.append(run.anchor.fused[b].clone())
                out.maps.append(run.anchor.maps[b].clone())
    if setting is not None:
        out.steered = steered_cells / monitored_cells if monitored_cells else 0.0
        out.visual_mass = float(np.mean(masses)) if masses else float("nan")
        out.anchor_mass = float(np.mean(anchor_masses)) if anchor_masses else float("nan")
        out.amc = float(np.nanmean(scores)) if scores else float("nan")
    return out


@torch.no_grad()
def answer_yes(
    model, scenes: Sequence[Scene], kinds: Sequence[int], setting: GuardSetting | None = None, batch_size: int = BATCH,
    *, drift: Drift = None,
) -> np.ndarray:
    """Whether the greedy answer to ``"is there a <kind> ?"`` about each scene starts with "yes"
    (generated inside ``setting``'s guard when given, under ``drift``)."""
    answers = []
    for start in range(0, len(scenes), batch_size):
        chunk, asked = scenes[start : start + batch_size], kinds[start : start + batch_size]
        inputs = batches.prompts([text.question(k) for k in asked], chunk)
        guard = setting.make(model) if setting is not None else nullcontext()
        with drift(model) if drift is not None else nullcontext(), guard:
            generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        answers += (generated[:, inputs["input_ids"].shape[1]] == text.YES).tolist()
    return np.array(answers, dtype=bool)


# -- suites -------------------------------------------------------------------------------------
@dataclass
class Suite:
    """The scenes and questions of one evaluation seed.

    ``adversarial``: scenes that break the correlations (each A without its B, each B without its
    A). ``control``: scenes of the training distribution. POPE questions: per adversarial scene
    the missing partner ("no", the adversarial negative) and a present kind ("yes"); per control
    scene one present and one absent kind drawn uniformly ("no correction needed")."""

    seed: int
    adversarial: list[Scene]
    control: list[Scene]
    pope_scenes: list[Scene]
    pope_kinds: list[int]
    pope_labels: list[bool]
    control_q_scenes: list[Scene]
    control_q_kinds: list[int]
    control_q_labels: list[bool]


def build_suite(seed: int, n_per_kind: int = 60, n_control: int = 200) -> Suite:
    rng = np.random.default_rng(10_000 + seed)
    adversarial = world.decorrelated_scenes(rng, n_per_kind)
    control = world.training_scenes(rng, n_control)
    ps, pk, pl = [], [], []
    for scene in adversarial:
        ps += [scene, scene]
        pk += [world.missing_partner(scene), scene.kinds[int(rng.integers(len(scene.kinds)))]]
        pl += [False, True]
    cs, ck, cl = [], [], []
    for scene in control:
        absent = [k for k in range(world.N_KINDS) if k not in scene.objects]
        cs += [scene, scene]
        ck += [scene.kinds[int(rng.integers(len(scene.kinds)))], absent[int(rng.integers(len(absent)))]]
        cl += [True, False]
    return Suite(seed, adversarial, control, ps, pk, pl, cs, ck, cl)


def truth(scenes: Sequence[Scene]) -> list[set[tuple[str, str]]]:
    return [{KINDS[k] for k in s.objects} for s in scenes]


def partner_rate(descriptions: Descriptions, scenes: Sequence[Scene]) -> float:
    """Share of decorrelated scenes whose description names the missing partner."""
    named = [world.missing_partner(s) in kinds for s, kinds in zip(scenes, descriptions.kinds)]
    return float(np.mean(named))


def other_absent_rate(descriptions: Descriptions, scenes: Sequence[Scene]) -> float:
    """Share of (scene, absent kind other than the missing partner) that the description names:
    the base rate of hallucination, against which the partner rate shows the co-occurrence prior."""
    named = []
    for scene, kinds in zip(scenes, descriptions.kinds):
        partner = world.missing_partner(scene)
        named += [k in kinds for k in range(world.N_KINDS) if k not in scene.objects and k != partner]
    return float(np.mean(named))


def run_suite(
    model, suite: Suite, setting: GuardSetting | None, *, questions: bool = True, control: bool = True, drift: Drift = None
) -> dict[str, float]:
    """All metrics of one model / guard setting on one suite (under ``drift`` when given)."""
    result: dict[str, float] = {}
    adv = describe(model, suite.adversarial, setting, drift=drift)
    chair = metrics.chair([text.mentions(i) for i in adv.ids], truth(suite.adversarial))
    result.update({f"adv {k}": v for k, v in chair.items()})
    result["adv partner"] = partner_rate(adv, suite.adversarial)
    result["adv ms per description"] = 1e3 * adv.seconds / len(suite.adversarial)
    result["adv other"] = other_absent_rate(adv, suite.adversarial)
    if setting is not None:
        result["steered"] = adv.steered
        result["visual mass"] = adv.visual_mass
        result["anchor mass"] = adv.anchor_mass
        result["amc"] = adv.amc
    if control:
        ctl = describe(model, suite.control, setting, drift=drift)
        chair = metrics.chair([text.mentions(i) for i in ctl.ids], truth(suite.control))
        result.update({f"ctl {k}": v for k, v in chair.items()})
    if questions:
        pope = metrics.pope(answer_yes(model, suite.pope_scenes, suite.pope_kinds, setting, drift=drift), suite.pope_labels)
        result.update({f"pope {k}": v for k, v in pope.items()})
        if control:
            ctl_q = metrics.pope(
                answer_yes(model, suite.control_q_scenes, suite.control_q_kinds, setting, drift=drift), suite.control_q_labels
            )
            result["ctl qa accuracy"] = ctl_q["accuracy"]
    return result
