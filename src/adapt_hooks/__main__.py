"""``adapt-hooks`` command line: ``adapt-hooks demo`` runs a guarded generation on an embedded
tiny model (no download) and prints how the text-to-image attention drifted, token by token."""

from __future__ import annotations

import argparse
import sys

from . import DriftMonitor, guard
from .tiny import model_types, tiny_inputs, tiny_model


def demo(args: argparse.Namespace) -> int:
    import torch

    if args.tokens < 1:
        raise ValueError(f"--tokens must be at least 1, got {args.tokens}")
    model = tiny_model(args.family, "sdpa", seed=args.seed)
    inputs = tiny_inputs(model, 1, seed=args.seed)
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False)
        with guard(model, monitor=DriftMonitor(tau=args.tau, alpha=args.alpha)) as run:
            steered = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    history = run.monitor.history
    n_image = int(run.anchor.layout.valid.sum())
    print(f"adapt-hooks demo: tiny random-weight {type(model).__name__}, {n_image} image tokens, "
          f"{len(run.layers)} hooked layers, K={run.anchor.k}, tau={args.tau}, alpha={args.alpha}")
    print(f"{'step':>4} {'token':>5} {'visual mass':>11} {'AMC/anchor':>10} {'HHI':>6} {'change':>6}  steered layers")
    for t in range(history["amc"].shape[0]):
        amc = history["amc"][t, :, 0]
        steered_layers = [run.layers[i] for i in history["steered"][t, :, 0].nonzero().flatten().tolist()]
        amc_text = "  (anchor)" if amc.isnan().all() else f"{amc.mean():10.3f}"
        print(
            f"{t + 1:>4} {int(steered[0, prompt + t + 1]):>5} {history['visual_mass'][t, :, 0].mean():11.3f} "
            f"{amc_text} {history['hhi'][t, :, 0].mean():6.3f} {history['change_rate'][t, :, 0].mean():6.3f}  "
            f"{steered_layers or '-'}"
        )
    print(f"intervention rate: {run.monitor.intervention_rate:.1%} of (step, layer) cells")
    print(f"unguarded: {plain[0, prompt:].tolist()}")
    print(f"guarded:   {steered[0, prompt:].tolist()}")
    if run.anchor.weights is None:
        print(f"no anchor: {args.tokens - 1} decode steps are fewer than K={run.anchor.k}; ask for more --tokens")
        return 0
    grid = run.anchor.grid(0)
    print(f"anchor ({grid.shape[0]}x{grid.shape[1]}, refined weights w):")
    for row in grid:
        print("  " + " ".join(" .:-=+*#%@"[min(9, int(v * 10))] for v in row.tolist()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adapt-hooks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="guarded generation on an embedded tiny model (no download)")
    p.add_argument("--family", choices=model_types(), default="llava", help="tiny model family (default: llava)")
    p.add_argument("--tokens", type=int, default=24, help="new tokens to generate (default: 24)")
    p.add_argument("--tau", type=float, default=0.6, help="drift threshold on AMC / anchor AMC (default: 0.6)")
    p.add_argument("--alpha", type=float, default=0.5, help="strength of the anchor log-prior (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny model and its inputs (default: 0)")
    p.set_defaults(run=demo)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"adapt-hooks: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
