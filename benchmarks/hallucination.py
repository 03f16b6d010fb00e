"""Hallucination benchmark of adapt-hooks on the tiny synthetic-scene LLaVA (docs/evidence.md).

    PYTHONPATH=src python benchmarks/hallucination.py                 # everything, ~25 min on 2 cores
    PYTHONPATH=src python benchmarks/hallucination.py --quick         # every table on small sets, ~1 min
    PYTHONPATH=src python benchmarks/hallucination.py --markdown out.md --json out.json

Loads the stored model (``adapt_hooks/shapes/weights``) and measures, over evaluation seeds 0-2:

1. side by side on decorrelated scenes: the plain model, the ADAPT guard (paper defaults and the
   mass gate), PAI (with and without its CFG step), VCD, guard + VCD, VAG-DPO, ordinary DPO and the
   fine-tuned models under the best inference-time setting — CHAIR, partner rate, recall, POPE,
   control accuracy and cost;
2. the positive control: attention drift injected with ``adapt_hooks.stress.inject_drift`` (four
   kinds, three strengths) — what it does to the plain model (premise), and how much of that
   damage each method undoes (remedy), the best guard setting chosen per kind on a separate seed;
3. which signal sees a hallucination: AUROC of each monitored signal and of the token probability
   at the mentions after the anchor phase;
4. VAG-DPO variants (VE background, rejected noise step) against ordinary DPO;
5. a sweep over the guard's settings and diagnostics of the anchor and the gate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidence import analysis, metrics  # noqa: E402
from evidence.evaluate import DEFAULT, GuardSetting  # noqa: E402
from evidence.experiments import (  # noqa: E402
    INFERENCE, Plan, Runner, job_drift, job_dpo, job_main, job_sweep, job_tune, job_warning,
)
from adapt_hooks.shapes.model import WEIGHTS_DIR, load_model, n_parameters  # noqa: E402

MAIN_COLUMNS = {
    "adv CHAIR_i": "CHAIR_i ↓", "adv CHAIR_s": "CHAIR_s ↓", "adv partner": "partner named ↓", "adv recall": "recall ↑",
    "pope accuracy": "adv. POPE acc ↑", "ctl qa accuracy": "control yes/no acc ↑", "ctl CHAIR_i": "control CHAIR_i ↓",
    "cost": "time ÷ plain",
}
POPE_COLUMNS = {
    "adv other": "other absent named", "pope precision": "POPE prec ↑", "pope F1": "POPE F1 ↑", "pope yes_ratio": "POPE yes",
    "ctl CHAIR_s": "control CHAIR_s ↓", "ctl recall": "control recall ↑", "steered": "steered",
    "anchor mass": "image mass, steps ≤ K", "visual mass": "image mass, steps > K", "adv ms per description": "ms / description",
}
PREMISE_COLUMNS = {
    "adv CHAIR_i": "CHAIR_i ↓", "adv CHAIR_s": "CHAIR_s ↓", "adv partner": "partner named ↓", "adv recall": "recall ↑",
    "adv other": "other absent named", "pope accuracy": "adv. POPE acc ↑",
}
GATE_COLUMNS = {
    "amc": "AMC (anchor-normalised), steps > K", "visual mass": "image mass, steps > K", "anchor mass": "image mass, steps ≤ K",
    "guard steered": "gate open (paper guard)",
}
SWEEP_COLUMNS = {
    "adv CHAIR_i": "CHAIR_i ↓", "adv CHAIR_s": "CHAIR_s ↓", "adv partner": "partner ↓", "adv recall": "recall ↑",
    "ctl CHAIR_i": "ctl CHAIR_i ↓", "ctl recall": "ctl recall ↑", "steered": "steered", "visual mass": "image mass",
}


def sweep_settings() -> list[GuardSetting]:
    """The guard settings of the sweep (the first is the paper default)."""
    s = [DEFAULT]
    s += [GuardSetting(f"τ {t}", tau=t) for t in (0.3, 0.8, 0.9, 1.0)]
    s += [GuardSetting(f"α {a}", alpha=a) for a in (1.0, 2.0, 4.0)]
    s += [GuardSetting(f"τ 0.9, α {a}", tau=0.9, alpha=a) for a in (2.0, 4.0)]
    s += [GuardSetting(f"K {k}", k=k) for k in (3, 8)]
    s += [GuardSetting(f"layers {ls}", layers=ls) for ls in ((0,), (1,), (2,), (3,), (2, 3))]
    s += [GuardSetting("steering blend", steering="blend"), GuardSetting("steering redistribute", steering="redistribute")]
    s += [GuardSetting("raw AMC (normalize=None), α 2", normalize=None, alpha=2.0)]
    return s


# -- tables ------------------------------------------------------------------------------------------------
def table(rows: dict[str, list[dict]], columns: dict[str, str], digits: int = 3, first: str = "setting") -> str:
    """Markdown table of mean ± std over seeds of each row's per-seed result dicts."""
    lines = [f"| {first} | " + " | ".join(columns.values()) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, results in rows.items():
        cells = []
        for key in columns:
            values = [r[key] for r in results if r.get(key) is not None and not np.isnan(r[key])]
            cells.append(metrics.format_mean_std(values, 2 if key == "cost" else digits) if values else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dict_table(rows: dict[str, dict[str, float]], digits: int = 3) -> str:
    columns = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.{digits}f}" if isinstance(values[c], float) else str(values[c]) for c in columns) + " |")
    return "\n".join(lines)


def remedy_table(kind: str, plan: Plan, drift: list[dict], clean: list[dict]) -> str:
    """Per method (rows) and strength (columns): CHAIR_i under the drift, and the share of the
    damage undone, ``(plain drifted − method drifted) / (plain drifted − plain clean)`` per seed."""
    jobs = [j for j in drift if j["kind"] == kind]
    names = ["plain model", *jobs[0]["remedy"][plan.strengths[0]]]
    head = "| method | " + " | ".join(f"CHAIR_i at {s:g} (damage undone)" for s in plan.strengths) + " |"
    lines = [head, "|" + "---|" * (len(plan.strengths) + 1)]
    base = {c["seed"]: c["adv CHAIR_i"] for c in clean}
    for name in names:
        cells = []
        for strength in plan.strengths:
            values, undone = [], []
            for job in jobs:
                plain = job["premise"][strength]["adv CHAIR_i"]
                value = plain if name == "plain model" else job["remedy"][strength][name]["adv CHAIR_i"]
                values.append(value)
                damage = plain - base[job["seed"]]
                if name != "plain model" and damage > 0.01:  # undone share only where there is damage to undo
                    undone.append((plain - value) / damage)
            cell = metrics.format_mean_std(values)
            cells.append(cell + (f" ({100 * np.mean(undone):+.0f} %)" if undone else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def auroc_table(mains: list[dict]) -> str:
    """Rows: signals; columns: the un-injected runs and each kind of drift; mean ± std over seeds."""
    runs = list(mains[0]["mentions"])
    per_seed = [{run: analysis.signal_auroc(m["mentions"][run]) for run in runs} for m in mains]
    lines = ["| signal (risk direction) | " + " | ".join(runs) + " |", "|" + "---|" * (len(runs) + 1)]
    for name in (*analysis.RISK_SIGNALS, "n hallucinated", "n correct"):
        cells = []
        for run in runs:
            values = [s[run][name] for s in per_seed if not np.isnan(s[run][name])]
            if name.startswith("n "):
                cells.append(str(int(sum(values))))
            else:
                cells.append(metrics.format_mean_std(values, 2) if values else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _guard_runs(rows: dict[str, list[dict]], drift: list[dict], plan: Plan) -> list[list[dict]]:
    """The paper guard's per-seed results in the order of the premise table's rows."""
    runs = [rows["guard (paper defaults)"]]
    for kind in plan.kinds:
        for strength in plan.strengths:
            runs.append([j["remedy"][strength]["guard (paper defaults)"] for j in drift if j["kind"] == kind])
    return runs


def best_inference(rows: dict[str, list[dict]]) -> str:
    """The inference-time setting with the lowest mean partner rate on the plain model."""
    return min((s.name for s in INFERENCE), key=lambda n: np.mean([r["adv partner"] for r in rows[n]]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every table on small sets, one seed (what the tests run)")
    parser.add_argument("--seeds", type=int, nargs="+", help="evaluation (and fine-tune) seeds; default 0 1 2")
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default: 2)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-dpo", action="store_true")
    parser.add_argument("--no-drift", action="store_true", help="skip the positive control")
    parser.add_argument("--save-risk", type=Path, help="write the fitted early-warning risk model here (safetensors)")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--json", type=Path, help="also write every per-seed number here")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    if args.seeds:
        plan = replace(plan, seeds=tuple(args.seeds))
    if args.no_sweep:
        plan = replace(plan, sweep_seeds=0)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    model = load_model(args.weights, args.attn)
    suite = plan.suite(plan.seeds[0])
    log(f"model {n_parameters(model) / 1e6:.2f} M parameters; seeds {list(plan.seeds)}; {len(suite.adversarial)} decorrelated "
        f"and {len(suite.control)} control scenes per seed; {args.workers} worker(s)")
    runner = Runner(args.weights, args.attn, args.threads, args.workers)
    try:
        sweep = sweep_settings() if plan.sweep_seeds else []
        first = [(job_main, (plan, s)) for s in plan.seeds]
        first += [] if args.no_drift else [(job_tune, (plan, kind)) for kind in plan.kinds]
        first += [(job_sweep, (plan, s, sweep)) for s in plan.seeds[: plan.sweep_seeds]]
        first += [(job_warning, (plan,))]
        done = runner.run(first)
        (warning,) = [r for r in done if "threshold" in r]
        mains = [r for r in done if "mentions" in r]
        tuned = {r["kind"]: r for r in done if "scores" in r}
        sweeps = [r for r in done if "rows" in r and "mentions" not in r]
        log("side-by-side inference, signals, tuning and sweep done")
        rows: dict[str, list[dict]] = {}
        for m in mains:
            for name, result in m["rows"].items():
                rows.setdefault(name, []).append(result)
        best = best_inference(rows)
        second = [] if args.no_dpo else [(job_dpo, (plan, s, "vag", best)) for s in plan.seeds]
        second += [] if args.no_dpo else [(job_dpo, (plan, s, "plain", best)) for s in plan.seeds]
        second += [] if args.no_drift else [(job_drift, (plan, s, k, tuned[k]["best"])) for s in plan.seeds for k in plan.kinds]
        done = runner.run(second)
        log("fine-tunes and the positive control done")
    finally:
        runner.close()
    dpos = [r for r in done if "logs" in r]
    drift = [r for r in done if "premise" in r]
    for d in dpos:
        for name, result in d["rows"].items():
            rows.setdefault(name, []).append(result)
    plain_ms = {m["seed"]: m["rows"]["plain model"]["adv ms per description"] for m in mains}
    seed_of = {id(r): m["seed"] for m in mains + dpos for r in m["rows"].values()}
    for results in rows.values():
        for r in results:
            r["cost"] = r["adv ms per description"] / plain_ms[seed_of[id(r)]]

    side = ["plain model", "guard (paper defaults)", "guard, mass gate (τ 0.8)", *[s.name for s in INFERENCE[2:]]]
    side += [n for n in rows if n.startswith(("VAG-DPO", "ordinary DPO"))]  # each fine-tune alone, + guard, + the best setting
    side = [n for n in side if n in rows]
    out = [
        f"Model: {n_parameters(model) / 1e6:.2f} M parameters, attention {args.attn}; seeds {list(plan.seeds)}; "
        f"{len(suite.adversarial)} decorrelated and {len(suite.control)} control scenes per seed; torch {torch.__version__}, "
        f"{platform.machine()}, {args.workers} worker(s) of {args.threads} thread(s); {time.time() - t0:.0f} s.",
        "",
        "### Side by side: decorrelated scenes (each A without its B, each B without its A) and the control",
        "",
        f"Best inference-time setting (lowest partner rate above, applied to the fine-tuned models): {best}.",
        "",
        table({n: rows[n] for n in side}, MAIN_COLUMNS),
        "",
        "### More columns of the same runs",
        "",
        table({n: rows[n] for n in side}, POPE_COLUMNS),
    ]
    if dpos:
        variants = ["VAG-DPO", *[v for v, _ in plan.variants], "ordinary DPO (original image both sides)"]
        out += ["", "### VAG-DPO variants against ordinary DPO (same preference pairs)", "",
                table({n: rows[n] for n in variants if n in rows}, MAIN_COLUMNS, first="fine-tune")]
    if drift:
        clean = [dict(seed=m["seed"], **m["rows"]["plain model"]) for m in mains]
        premise = {"no drift": [m["rows"]["plain model"] for m in mains]}
        for kind in plan.kinds:
            for strength in plan.strengths:
                premise[f"{kind} {strength:g}"] = [j["premise"][strength] for j in drift if j["kind"] == kind]
        out += ["", "### Positive control, premise: the plain model under injected drift", "", table(premise, PREMISE_COLUMNS, first="drift")]
        gate = {name: [dict(r, **{"guard steered": g["steered"]}) for r, g in zip(results, guarded)]
                for (name, results), guarded in zip(premise.items(), _guard_runs(rows, drift, plan))}
        out += ["", "### What the monitor sees under the drift (observe-only telemetry after the anchor phase; the paper guard's gate)", "",
                table(gate, GATE_COLUMNS, first="drift")]
        for kind in plan.kinds:
            scores = ", ".join(f"{n} {v:.3f}" for n, v in tuned[kind]["scores"].items())
            out += ["", f"### Positive control, remedy: {kind}", "",
                    f"Best guard setting on tuning seed {plan.tune_seed} at strength {plan.signal_strength:g} "
                    f"(CHAIR_i): **{tuned[kind]['best']}** ({scores}).", "", remedy_table(kind, plan, drift, clean)]
    out += ["", "### Which signal sees the hallucination: AUROC at the mentions after the anchor phase (plain model)", "",
            auroc_table(mains)]
    quality = list(warning["quality"].values())
    lines = ["| measure | " + " | ".join(["mean ± std over seeds"]) + " |", "|---|---|"]
    for name in quality[0]:
        values = [q[name] for q in quality if not np.isnan(q[name])]
        cell = str(int(sum(values))) if name.startswith("n ") else (metrics.format_mean_std(values, 2) if values else "–")
        lines.append(f"| {name} | {cell} |")
    out += ["", f"### Early warning: a risk fitted with adapt_hooks.fit_risk on seeds {list(plan.risk_seeds)}, threshold "
            f"{warning['threshold']:.3f} (Youden, on the fitting seeds), measured on seeds {list(plan.seeds)}", "", "\n".join(lines)]
    if args.save_risk:
        from adapt_hooks import RiskModel
        from adapt_hooks.risk import architecture

        r = warning["risk"]
        model_type, layers, hidden = architecture(model)
        RiskModel(torch.tensor(r["weights"]), r["bias"], torch.tensor(r["mean"]), torch.tensor(r["std"]), model_type, layers,
                  {**warning["meta"], "threshold": warning["threshold"]}, hidden).save(args.save_risk)
    sweep_rows: dict[str, list[dict]] = {}
    if sweeps:
        sweep_rows["no guard (plain model)"] = [m["rows"]["plain model"] for m in mains[: plan.sweep_seeds]]
        for s in sweeps:
            for name, result in s["rows"].items():
                sweep_rows.setdefault(name, []).append(result)
        out += ["", f"### Guard sweep (plain model, {plan.sweep_seeds} seeds)", "", table(sweep_rows, SWEEP_COLUMNS)]
    out += [
        "", f"### Where the anchor lands (seed {plan.seeds[0]}, decorrelated scenes): mass on object patches ÷ area share (1 = uniform)",
        "", dict_table(mains[0]["anchor_quality"], 2),
        "", f"### The drift gate at the step that names an object (seed {plan.seeds[0]}; AMC normalised by the anchor; τ {DEFAULT.tau})",
        "", dict_table(mains[0]["gate"], 3),
    ]
    if dpos:
        out += ["", "### Fine-tunes", ""]
        for d in sorted(dpos, key=lambda d: d["seed"]):
            for entry in d["logs"]:
                last = entry["history"][-1]
                out.append(
                    f"- {entry['variant']}, seed {entry['seed']}: {entry['records']} records, anchors/pairs "
                    f"{entry['prepare_seconds']:.0f} s, training {entry['train_seconds']:.0f} s; final loss {last['loss']:.3f}, "
                    f"margin {last['margin']:+.2f}, reward accuracy {last['accuracy']:.2f}"
                )
    report = "\n".join(out)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    if args.json:
        mentions = {m["seed"]: {run: analysis.signal_auroc(v) for run, v in m["mentions"].items()} for m in mains}
        args.json.write_text(json.dumps(
            dict(rows=rows, drift=drift, tuned=tuned, auroc=mentions, warning=warning, sweep=sweep_rows, anchor_quality=mains[0]["anchor_quality"],
                 gate=mains[0]["gate"], dpo=[e for d in dpos for e in d["logs"]], best_inference=best),
            indent=1, default=float,
        ) + "\n")


if __name__ == "__main__":
    main()
