"""Human-readable output of a guarded run: the per-token drift table and the pictures
(anchor heat map, VE image, drift signals over tokens x layers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..hooks.guard import Guard

PLOT_HINT = "drift.png needs matplotlib: pip install 'adapt-hooks[plot]'"


def drift_table(run: Guard, tokens: list[str], row: int = 0) -> str:
    """One line per decode step: the token it produced, layer-mean visual mass and AMC (relative
    to the anchor phase), the hallucination risk (with a risk model) and the layers that were steered."""
    history = run.monitor.history
    if not history:
        return "(no decode steps were observed)"
    risk = run.monitor.risk
    lines = [f"{'step':>4}  {'token':<14} {'visual mass':>11} {'AMC':>8}" + ("    risk" if risk is not None else "") + "  steered layers"]
    for t in range(history["amc"].shape[0]):
        amc = history["amc"][t, :, row]
        steered = [run.layers[i] for i in history["steered"][t, :, row].nonzero().flatten().tolist()]
        amc_text = "anchor" if amc.isnan().all() else f"{amc.mean().item():.3f}"
        token = tokens[t] if t < len(tokens) else ""
        mass = history["visual_mass"][t, :, row].mean().item()
        risk_text = "" if risk is None else (f" {risk[t, row].item():>7.3f}" if t < risk.shape[0] else " " * 8)
        lines.append(f"{t + 1:>4}  {token[:14]:<14} {mass:>11.3f} {amc_text:>8}{risk_text}  {', '.join(map(str, steered)) or '-'}")
    lines.append(f"intervention rate: {run.monitor.intervention_rate:.1%} of (step, layer, row) cells")
    return "\n".join(lines)


def write_pictures(run: Guard, image, out: Path, row: int = 0, box=None, say: Callable[[str], None] = print) -> list[Path]:
    """``anchor.png`` (heat map over the image), ``ve.png`` (anchor-enhanced image) and, with
    matplotlib, ``drift.png``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if run.anchor.weights is not None:
        shown = image.resize((max(256, image.width), max(256, image.height * max(256, image.width) // image.width)))
        scale = shown.width / image.width
        scaled_box = None if box is None else tuple(round(v * scale) for v in box)
        for name, picture in (("anchor.png", run.anchor.heatmap(shown, row, box=scaled_box)), ("ve.png", run.anchor.to_image(shown, row, box=scaled_box))):
            picture.save(out / name)
            written.append(out / name)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        say(PLOT_HINT)
        return written
    history = run.monitor.history
    if history:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
        panels = (("visual_mass", "visual mass"), ("amc", "AMC / anchor"), ("steered", "steered"))
        for ax, (key, title) in zip(axes, panels):
            limits = {"vmin": 0, "vmax": 1} if key == "steered" else {}
            steps = history[key].shape[0]
            shown = ax.imshow(history[key][:, :, row].T.numpy(), aspect="auto", origin="lower", cmap="viridis",
                              extent=(0.5, steps + 0.5, -0.5, len(run.layers) - 0.5), **limits)  # steps from 1, as in the table
            ax.set(title=title, xlabel="decode step", ylabel="hooked layer")
            ax.set_yticks(range(len(run.layers)), [str(i) for i in run.layers])
            fig.colorbar(shown, ax=ax)
        fig.savefig(out / "drift.png", dpi=110)
        plt.close(fig)
        written.append(out / "drift.png")
    return written
