"""The benchmark's experiments as independent jobs, so that they can run in parallel processes.

Each job loads nothing itself: a worker holds one copy of the stored model (:func:`init_worker`)
and a job returns plain dicts of per-seed metrics. :class:`Plan` says what to run; ``Plan.quick``
is the small version the tests exercise.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import adapt_hooks
from adapt_hooks import stress

from . import analysis
from .evaluate import DEFAULT, METHODS, OBSERVE, GuardSetting, build_suite, describe, run_suite
from .finetune import DPOSettings, preference_records, vagdpo
from adapt_hooks.shapes.model import load_model, load_processor

#: ADAPT with the gate on visual mass relative to the anchor phase, everything else at the paper's defaults.
MASS_GATE = GuardSetting("guard, mass gate (τ 0.8)", methods=lambda: [adapt_hooks.ADAPT(tau=0.8, gate="mass")])
#: The guard settings the positive control chooses "the best guard setting" from, per kind.
CANDIDATES = (
    DEFAULT,
    MASS_GATE,
    GuardSetting("τ 0.9, α 2", tau=0.9, alpha=2.0),
    GuardSetting("τ 1.0, α 4", tau=1.0, alpha=4.0),
    GuardSetting("mass gate τ 0.9, α 2", methods=lambda: [adapt_hooks.ADAPT(tau=0.9, alpha=2.0, gate="mass")]),
    GuardSetting("steering blend", steering="blend"),
    GuardSetting("steering redistribute", steering="redistribute"),
    GuardSetting("K 3", k=3),
)
#: Rows of the remedy tables besides the plain model and the tuned guard.
REMEDIES = (DEFAULT, MASS_GATE, METHODS[0], METHODS[2], METHODS[4])  # guard, mass gate, PAI, VCD, guard + VCD
#: Settings a model is described under in the side-by-side table (the plain model first).
INFERENCE = (DEFAULT, MASS_GATE, *METHODS)
SETTINGS: dict[str, GuardSetting] = {s.name: s for s in (*CANDIDATES, *INFERENCE)}


@dataclass(frozen=True)
class Plan:
    """What one benchmark run measures."""

    seeds: tuple[int, ...] = (0, 1, 2)
    n_per_kind: int = 60
    n_control: int = 200
    kinds: tuple[str, ...] = stress.KINDS
    strengths: tuple[float, ...] = (2.0, 6.0, 18.0)
    signal_strength: float = 6.0  # the strength of the drifted runs the signal AUROC reads, and of the tuning
    tune_seed: int = 100  # scenes the best guard setting is chosen on, apart from every evaluation seed
    dpo: DPOSettings = DPOSettings()
    variants: tuple[tuple[str, DPOSettings], ...] = (
        ("VE background: mean colour", DPOSettings(background="mean")),
        ("VE background: blurred image", DPOSettings(background="blur")),
        ("rejected noise step 250", DPOSettings(noise_step=250)),
        ("rejected noise step 900", DPOSettings(noise_step=900)),
    )
    sweep_seeds: int = 2  # the guard sweep runs on this many of the seeds (0: no sweep)
    candidates: int = len(CANDIDATES)  # how many of CANDIDATES the tuning tries
    risk_seeds: tuple[int, ...] = (10, 11)  # the scenes the early-warning risk is fitted on, apart from every evaluation seed

    @classmethod
    def quick(cls) -> Plan:
        """Every code path on small sets, one seed: about a minute."""
        dpo = DPOSettings(steps=12, batch_size=8, n_per_kind=6, n_replay=24)
        return cls(
            seeds=(0,), n_per_kind=10, n_control=24, strengths=(6.0,), dpo=dpo,
            variants=(("VE background: mean colour", replace(dpo, background="mean")),), sweep_seeds=0, candidates=2,
            risk_seeds=(10,),
        )  # fmt: skip

    @property
    def ordinary_dpo(self) -> DPOSettings:
        return replace(self.dpo, images="plain")

    def suite(self, seed: int):
        return build_suite(seed, self.n_per_kind, self.n_control)

    def drift(self, kind: str, strength: float) -> Callable:
        return lambda model: stress.inject_drift(model, kind, strength)


# -- worker state -------------------------------------------------------------------------------------
_STATE: dict[str, object] = {}


def init_worker(weights: Path, attn: str, threads: int) -> None:
    """Load the stored model and processor once per worker process."""
    torch.set_num_threads(threads)
    _STATE["model"] = load_model(weights, attn)
    _STATE["processor"] = load_processor(weights)


def _model():
    return _STATE["model"]


# -- jobs -------------------------------------------------------------------------------------------------
def plain_suite(model, suite) -> dict:
    """The metrics of ``model`` without any method: observed by an observe-only guard (its output
    is bit-identical to the plain model's, and it records telemetry), timed without one."""
    result = run_suite(model, suite, OBSERVE)
    unguarded = describe(model, suite.adversarial)  # the cost baseline: no guard at all
    result["adv ms per description"] = 1e3 * unguarded.seconds / len(suite.adversarial)
    return result


def job_main(plan: Plan, seed: int) -> dict:
    """The un-injected benchmark of one seed: the plain model and every inference-time setting,
    the per-mention signals (clean and under each kind of drift) and, for the first seed, the
    diagnostics of where the anchor lands and what the gate sees."""
    model, suite = _model(), plan.suite(seed)
    rows = {"plain model": plain_suite(model, suite)}
    for setting in INFERENCE:
        rows[setting.name] = run_suite(model, suite, setting)
    k = OBSERVE.k
    observed = describe(model, suite.adversarial, OBSERVE, probabilities=True)
    mentions = {"un-injected": analysis.mention_signals(observed, suite.adversarial, k)}
    for kind in plan.kinds:
        drifted = describe(model, suite.adversarial, OBSERVE, drift=plan.drift(kind, plan.signal_strength), probabilities=True)
        mentions[f"{kind} {plan.signal_strength:g}"] = analysis.mention_signals(drifted, suite.adversarial, k)
    out = dict(seed=seed, rows=rows, mentions=mentions)
    if seed == plan.seeds[0]:
        steered = describe(model, suite.adversarial, DEFAULT)
        out["anchor_quality"] = {"plain model (observe only)": analysis.anchor_quality(observed, suite.adversarial)}
        out["gate"] = {
            "observe only": analysis.gate_at_mentions(observed, suite.adversarial, DEFAULT.tau, DEFAULT.k),
            "guard (paper defaults)": analysis.gate_at_mentions(steered, suite.adversarial, DEFAULT.tau, DEFAULT.k),
        }
    return out


def job_warning(plan: Plan) -> dict:
    """The early warning: a risk model fitted with ``adapt_hooks.fit_risk`` on the plain model's
    descriptions of the ``risk_seeds`` scenes, its threshold chosen there (Youden), and its quality
    on every evaluation seed."""
    model = _model()
    fit_scenes = [scene for seed in plan.risk_seeds for scene in plan.suite(seed).adversarial]
    examples = analysis.risk_examples(describe(model, fit_scenes), fit_scenes)
    risk = adapt_hooks.fit_risk(model, examples, anchor=adapt_hooks.Anchor(k=OBSERVE.k))
    watching = replace(OBSERVE, risk=risk)
    threshold = analysis.youden_threshold(analysis.mention_risks(describe(model, fit_scenes, watching), fit_scenes, OBSERVE.k))
    quality = {}
    for seed in plan.seeds:
        scenes = plan.suite(seed).adversarial
        quality[seed] = analysis.warning_quality(describe(model, scenes, watching, probabilities=True), scenes, OBSERVE.k, threshold)
    tensors = dict(weights=risk.weights.tolist(), bias=risk.bias, mean=risk.mean.tolist(), std=risk.std.tolist())
    return dict(risk=tensors, meta=risk.meta, threshold=threshold, quality=quality)


def job_tune(plan: Plan, kind: str) -> dict:
    """The best guard setting against one kind of drift: the candidate with the lowest CHAIR_i on
    the tuning seed's decorrelated scenes at ``signal_strength``."""
    model, suite = _model(), plan.suite(plan.tune_seed)
    drift = plan.drift(kind, plan.signal_strength)
    scores = {s.name: run_suite(model, suite, s, questions=False, control=False, drift=drift)["adv CHAIR_i"] for s in CANDIDATES[: plan.candidates]}
    return dict(kind=kind, scores=scores, best=min(scores, key=scores.get))


def job_drift(plan: Plan, seed: int, kind: str, best: str) -> dict:
    """Premise and remedy of one kind on one seed: the plain model at every strength (CHAIR, POPE),
    and each remedy (the guard, its mass gate, the tuned guard ``best``, PAI, VCD, guard + VCD)."""
    model, suite = _model(), plan.suite(seed)
    premise, remedy = {}, {}
    remedies = [*REMEDIES, replace(SETTINGS[best], name=f"best guard setting ({best})")]
    for strength in plan.strengths:
        drift = plan.drift(kind, strength)
        premise[strength] = run_suite(model, suite, OBSERVE, control=False, drift=drift)  # outputs as unguarded, with telemetry
        remedy[strength] = {s.name: run_suite(model, suite, s, questions=False, control=False, drift=drift) for s in remedies}
    return dict(seed=seed, kind=kind, premise=premise, remedy=remedy)


def job_sweep(plan: Plan, seed: int, settings: Sequence[GuardSetting]) -> dict:
    model, suite = _model(), plan.suite(seed)
    return dict(seed=seed, rows={s.name: run_suite(model, suite, s, questions=False) for s in settings})


def job_dpo(plan: Plan, seed: int, group: str, best: str) -> dict:
    """The fine-tunes of one seed: ``group="vag"`` VAG-DPO (the method's settings; alone, with the
    guard and with the best inference-time setting ``best``) and its variants, which share its
    preference records; ``group="plain"`` ordinary DPO (alone and with ``best``)."""
    model, processor, suite = _model(), _STATE["processor"], plan.suite(seed)
    logs, rows = [], {}
    runs = [("VAG-DPO", plan.dpo), *plan.variants] if group == "vag" else [("ordinary DPO (original image both sides)", plan.ordinary_dpo)]
    assert len({settings.records_key for _, settings in runs}) == 1, "variants must share the preference records"
    start = time.time()
    records = preference_records(model.eval(), processor, seed, runs[0][1])
    prepared = time.time() - start
    for name, settings in runs:
        tuned, info = vagdpo(model, processor, seed, settings, log=lambda *_: None, records=records)
        info["prepare_seconds"] = prepared
        logs.append(dict(variant=name, seed=seed, **info))
        rows[name] = plain_suite(tuned, suite)
        if name == "VAG-DPO":
            rows[f"{name} + guard"] = run_suite(tuned, suite, DEFAULT)
        if name == runs[0][0]:
            rows[f"{name} + {best}"] = run_suite(tuned, suite, SETTINGS[best])
    return dict(seed=seed, rows=rows, logs=logs)


# -- running them -----------------------------------------------------------------------------------------
class Runner:
    """Runs jobs in ``workers`` processes (each with its own model), or in this one for ``workers=1``."""

    def __init__(self, weights: Path, attn: str, threads: int, workers: int) -> None:
        self.args = (weights, attn, threads)
        self.pool = None
        if workers > 1:
            context = multiprocessing.get_context("spawn")
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=self.args)
        else:
            init_worker(*self.args)

    def run(self, jobs: Sequence[tuple[Callable, tuple]]) -> list:
        """The results of ``jobs`` (``(function, args)``), in order."""
        if self.pool is None:
            return [fn(*args) for fn, args in jobs]
        futures = [self.pool.submit(fn, *args) for fn, args in jobs]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
