"""Train the tiny LLaVA of the hallucination benchmark from scratch on CPU and save it.

    PYTHONPATH=src python benchmarks/train_tiny_vlm.py            # ~15 min on one core
    PYTHONPATH=src python benchmarks/train_tiny_vlm.py --steps 50 --out /tmp/tiny   # smoke run

Scenes are drawn on the fly from the training distribution (``evidence.world``: partner B beside
its A in 95 % of scenes, alone in 5 %; 6 % of named objects not drawn), one fresh batch per step, from one seeded NumPy generator;
the model is initialised after ``torch.manual_seed(seed)``. With the same seed, torch version and
thread count the script reproduces the stored weights bit for bit. Writes ``config.json``,
``generation_config.json``, ``model.safetensors`` (fp32), the processor files and
``training.json`` (settings, losses, time, co-occurrence statistics) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapt_hooks.shapes import text, world  # noqa: E402
from adapt_hooks.shapes.model import WEIGHTS_DIR, build_model, n_parameters  # noqa: E402
from evidence import batches  # noqa: E402


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = build_model(args.seed)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: lr_factor(s, args.steps, args.warmup))
    kind_sets, losses, smoothed = [], [], None
    start = time.time()
    for step in range(args.steps):
        scenes = world.training_scenes(rng, args.batch_size, args.p_hidden)
        kind_sets += [s.kinds for s in scenes]
        batch = batches.collate([batches.example(s, rng) for s in scenes])
        batch["pixel_values"] = text.pixel_values(np.stack([s.pixels for s in scenes]))
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            losses.append([step, round(smoothed, 5)])
            print(f"step {step:5d}  loss {smoothed:.4f}  {time.time() - start:6.0f} s", flush=True)
    seconds = time.time() - start
    return dict(
        model=model, seconds=seconds, losses=losses, stats=world.cooccurrence_stats(kind_sets), n_scenes=len(kind_sets),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--p-hidden", type=float, default=world.P_HIDDEN,
                        help="probability that a training caption names an object the image does not show")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)

    result = train(args)
    model = result["model"].eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    text.build_processor().save_pretrained(args.out)
    info = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "parameters": n_parameters(model),
        "train_seconds": round(result["seconds"], 1),
        "scenes_seen": result["n_scenes"],
        "cooccurrence": result["stats"],
        "losses": result["losses"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    (args.out / "training.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"saved {n_parameters(model) / 1e6:.2f} M parameters to {args.out} after {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
