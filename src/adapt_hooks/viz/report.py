"""Human-readable output of a guarded run: the per-token drift table and the pictures (the anchor
over the image, the VE image, and the drift signals and risk along the generated words)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import torch

from ..hooks.guard import Guard

PLOT_HINT = "overview.png and drift.png need matplotlib: pip install 'adapt-hooks[plot]'"
#: The fixed colour scale of AMC / anchor in drift.png (1 = as concentrated as in the anchor phase).
AMC_SCALE = (0.0, 2.0)


def drift_table(run: Guard, tokens: list[str], row: int = 0, threshold: float | None = None,
                notes: Mapping[int, str] | None = None) -> str:  # fmt: skip
    """One line per decode step: the token it produced, layer-mean visual mass and AMC (relative
    to the anchor phase), the hallucination risk (with a risk model; ``!`` where it passes
    ``threshold``), the layers that were steered, and ``notes`` keyed by step (1-based)."""
    history = run.monitor.history
    if not history:
        return "(no decode steps were observed)"
    risk = run.monitor.risk
    notes = notes or {}
    lines = [f"{'step':>4}  {'token':<14} {'visual mass':>11} {'AMC':>8}" + ("     risk" if risk is not None else "") + "  steered layers"]
    for t in range(history["amc"].shape[0]):
        amc = history["amc"][t, :, row]
        steered = [run.layers[i] for i in history["steered"][t, :, row].nonzero().flatten().tolist()]
        amc_text = "anchor" if amc.isnan().all() else f"{amc.mean().item():.3f}"
        token = tokens[t] if t < len(tokens) else ""
        mass = history["visual_mass"][t, :, row].mean().item()
        risk_text = ""
        if risk is not None:
            value = risk[t, row].item() if t < risk.shape[0] else None
            flag = "!" if value is not None and threshold is not None and value > threshold else " "
            risk_text = f" {value:>7.3f}{flag}" if value is not None else " " * 9
        note = f"  {notes[t + 1]}" if t + 1 in notes else ""
        lines.append(f"{t + 1:>4}  {token[:14]:<14} {mass:>11.3f} {amc_text:>8}{risk_text}  {', '.join(map(str, steered)) or '-':<14}{note}".rstrip())
    lines.append(f"intervention rate: {run.monitor.intervention_rate:.1%} of the monitored (step, layer, row) cells")
    return "\n".join(lines)


def write_pictures(
    run: Guard, image, out: Path, row: int = 0, box=None, say: Callable[[str], None] = print, *,
    tokens: list[str] | None = None, marked: Collection[int] = (), threshold: float | None = None, tau: float | None = None,
    title: str = "",
) -> list[Path]:  # fmt: skip
    """``anchor.png`` (the anchor as a translucent heat map over the image), ``ve.png`` (the
    anchor-enhanced image) and, with matplotlib, ``overview.png`` (the image and both pictures
    side by side, see :func:`plot_overview`) and ``drift.png`` (see :func:`plot_drift`); ``box`` is
    the region of ``image`` the model saw (see :func:`processor_box`). Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if run.anchor.weights is not None:
        shown = enlarge(image)
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
    if run.anchor.weights is not None:
        fig = plot_overview(plt, run, shown, row, box=scaled_box, title=title)
        fig.savefig(out / "overview.png", dpi=64)
        plt.close(fig)
        written.append(out / "overview.png")
    if run.monitor.history:
        fig = plot_drift(plt, run, row, tokens=tokens, marked=marked, threshold=threshold, tau=tau)
        fig.savefig(out / "drift.png", dpi=110)
        plt.close(fig)
        written.append(out / "drift.png")
    return written


def processor_box(processor, image) -> tuple[int, int, int, int] | None:
    """The region of ``image`` (``(left, top, right, bottom)`` in its pixels) that the processor
    shows the model: the centre crop of a resize-shortest-edge-then-crop processor (CLIP, LLaVA-1.5),
    else ``None`` (the whole image, resized as it is)."""
    images = getattr(processor, "image_processor", processor)
    crop, size = getattr(images, "crop_size", None), getattr(images, "size", None)
    if not getattr(images, "do_center_crop", False) or not crop or not size:
        return None
    get = (lambda d, k: d.get(k) if isinstance(d, dict) else getattr(d, k, None))  # noqa: E731 - dict or SizeDict
    shortest, crop_h, crop_w = get(size, "shortest_edge"), get(crop, "height"), get(crop, "width")
    if not (shortest and crop_h and crop_w):
        return None
    scale = shortest / min(image.width, image.height)  # the resize before the crop
    width, height = min(image.width, round(crop_w / scale)), min(image.height, round(crop_h / scale))
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return left, top, left + width, top + height


def plot_overview(plt, run: Guard, image, row: int = 0, box=None, title: str = ""):
    """The image, the anchor over it and the anchor-enhanced image side by side, aspect kept, the
    processor's crop outlined, a colour bar for the anchor's weights and ``title`` (the settings)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    heat, ve = run.anchor.heatmap(image, row, box=box), run.anchor.to_image(image, row, box=box)
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 2.9 * image.height / image.width + 0.7), constrained_layout=True)
    for ax, picture, name in zip(axes, (image, heat, ve), ("image", "anchor", "anchor-enhanced (VE) image")):
        ax.imshow(np.asarray(picture))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
        if box is not None:
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, edgecolor="white", ls="--", lw=1))
    from matplotlib.colors import ListedColormap

    from .visual import colormap

    colours = ListedColormap((colormap(torch.linspace(0, 1, 256)) / 255).numpy())  # the heat map's own colours
    scale = plt.cm.ScalarMappable(cmap=colours, norm=plt.Normalize(0, 1))
    fig.colorbar(scale, ax=axes, shrink=0.8, label="anchor weight")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def enlarge(image, width: int = 288):
    """``image`` at least ``width`` pixels wide, aspect kept: nearest-neighbour for small pictures
    (a 48-pixel scene stays crisp), bicubic otherwise."""
    from PIL import Image

    side = max(width, image.width)
    resample = Image.Resampling.NEAREST if image.width < 128 else Image.Resampling.BICUBIC
    return image.resize((side, image.height * side // image.width), resample=resample)


def plot_drift(plt, run: Guard, row: int = 0, *, tokens: list[str] | None = None, marked: Collection[int] = (),
               threshold: float | None = None, tau: float | None = None):  # fmt: skip
    """A figure along the generated words (decode steps from 1, as in the table): the layer-mean
    visual mass and, with a risk model, the risk and its ``threshold`` on top; below, AMC / anchor
    per hooked layer on the fixed scale :data:`AMC_SCALE` with ``tau`` marked and the steered
    cells outlined. Steps in ``marked`` (e.g. a hallucinated word) are shaded red."""
    import numpy as np
    from matplotlib.patches import Rectangle

    history, risk = run.monitor.history, run.monitor.risk
    steps, n_layers = history["amc"].shape[0], len(run.layers)
    x = np.arange(1, steps + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7.0, 0.42 * steps + 2.5), 5.4), sharex=True, constrained_layout=True,
                                      gridspec_kw={"height_ratios": [1.0, 1.1]})  # fmt: skip
    top.plot(x, history["visual_mass"][:, :, row].mean(-1).numpy(), color="tab:blue", marker=".", label="visual mass (layer mean)")
    if risk is not None and risk.shape[0]:
        top.plot(x[: risk.shape[0]], risk[:, row].numpy(), color="tab:red", lw=2, marker="o", ms=4, label="hallucination risk")
        if threshold is not None:
            top.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"warning threshold {threshold:.2f}")
    top.set(ylim=(0, 1.02), ylabel="share / risk")
    top.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3, fontsize=8, frameon=False)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("0.85")  # the anchor phase has no AMC
    amc = history["amc"][:, :, row].T.numpy()
    image = bottom.imshow(np.ma.masked_invalid(amc), aspect="auto", origin="lower", cmap=cmap, vmin=AMC_SCALE[0], vmax=AMC_SCALE[1],
                          extent=(0.5, steps + 0.5, -0.5, n_layers - 0.5), interpolation="nearest")  # fmt: skip
    bar = fig.colorbar(image, ax=bottom, label="AMC / anchor (grey: anchor phase)")
    if tau is not None:
        bar.ax.axhline(tau, color="white", lw=2)
        bar.ax.text(0.5, tau, f"τ {tau:g}", color="black", ha="center", va="bottom", fontsize=7, transform=bar.ax.get_yaxis_transform())
    for t, layer in history["steered"][:, :, row].nonzero().tolist():
        bottom.add_patch(Rectangle((t + 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="white", lw=1.5))
    bottom.set(ylabel="hooked layer", xlabel="generated word (decode step)" if tokens else "decode step")
    bottom.set_yticks(range(n_layers), [str(i) for i in run.layers])
    for t in marked:
        top.axvspan(t - 0.5, t + 0.5, color="red", alpha=0.18, lw=0)
        bottom.axvspan(t - 0.5, t + 0.5, fill=False, edgecolor="red", lw=2.5, zorder=3)
    if tokens:
        labels = [f"{tokens[t - 1] if t - 1 < len(tokens) else ''}" for t in x]
        bottom.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
        for t, label in zip(x, bottom.get_xticklabels()):
            if t in marked:
                label.set(color="red", fontweight="bold")
    if history["steered"].any():
        bottom.set_title("steered cells outlined in white", fontsize=8, loc="right")
    return fig
