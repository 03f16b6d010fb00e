"""Fine-tune a VLM with VAG-DPO: chosen answers on anchor-enhanced images, rejected (hallucinated)
answers on noise-injected images.

Runs as is on a tiny random-weight LLaVA (CPU, seconds):

    python examples/train_vagdpo.py

on several processes through accelerate (DDP; here two CPU processes over gloo), with the same
loss as one process on the same global batch (--batch-size is the global batch, split across the
processes):

    accelerate launch --multi_gpu --num_processes 2 examples/train_vagdpo.py --steps 2 --batch-size 4

(``--multi_gpu`` starts the processes through torchrun; without a GPU they run on the CPU. Note
that ``accelerate launch --cpu --num_processes 2`` starts a single process unless MPI is set up.)

and on a real checkpoint with a JSON-lines file of {"image", "question", "chosen", "rejected"}
records (image paths relative to the file), e.g. on 8 GPUs with docs/accelerate/ddp.yaml:

    accelerate launch --config_file docs/accelerate/ddp.yaml examples/train_vagdpo.py \
        --model llava-hf/llava-1.5-7b-hf --data pairs.jsonl --dtype bfloat16 --peft \
        --steps 500 --batch-size 32 --lr 5e-6 --anchor-cache anchors/

The rejected image's noise is fixed per record (seeded by its text), so the run does not depend
on how the batch is split.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

from adapt_hooks import VAGDPOCollator, VAGDPOLoss, reference_logps, sequence_logps
from adapt_hooks.training.anchors import iter_anchors


def load(args, device):
    """Model and processor: the tiny LLaVA by default, else any checkpoint through the Auto classes."""
    if args.model == "tiny":
        from adapt_hooks.tiny import tiny_model
        from adapt_hooks.tiny.llava import processor

        return tiny_model("llava", "sdpa", seed=args.seed).to(device), processor()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
    return model.to(device), AutoProcessor.from_pretrained(args.model)


def records(args):
    """Training records: from --data, or synthetic coloured-square scenes for the tiny model."""
    from PIL import Image

    if args.data:
        root = Path(args.data).parent
        rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
        return [dict(row, image=Image.open(root / row["image"]).convert("RGB")) for row in rows]
    rng = random.Random(args.seed)
    out = []
    for _ in range(8):
        image = Image.new("RGB", (48, 48), (20, 20, 20))
        x, y = rng.randrange(0, 24), rng.randrange(0, 24)
        image.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 20, y + 20))
        out.append(dict(image=image, question="what is in the image", chosen="the image .", rejected="what user : assistant"))
    return out


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("--model", default="tiny", help="checkpoint path or hub id (default: the tiny LLaVA)")
    out.add_argument("--data", help="JSON lines of {image, question, chosen, rejected}")
    out.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    out.add_argument("--steps", type=int, default=20)
    out.add_argument("--batch-size", type=int, default=2, help="pairs per step, over all processes")
    out.add_argument("--lr", type=float, default=1e-3)
    out.add_argument("--beta", type=float, default=0.1)
    out.add_argument("--sft-weight", type=float, default=0.0)
    out.add_argument("--peft", action="store_true", help="train a LoRA adapter; the reference is the adapter disabled")
    out.add_argument("--anchor-cache", help="directory caching the anchors (computed once, by the main process)")
    out.add_argument("--log", help="write each step's loss and metrics here as JSON lines")
    out.add_argument("--seed", type=int, default=0)
    return out


def main(argv=None) -> None:
    options = parser()
    args = options.parse_args(argv)
    # Several CPU processes (gloo) where there is no GPU. A VLM leaves some vision-tower weights without
    # gradients (the layers after the selected feature layer), which DDP must be told about.
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[unused])
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.batch_size % world:
        options.error(f"--batch-size {args.batch_size} does not split over {world} processes")
    torch.manual_seed(args.seed)

    model, processor = load(args, accelerator.device)
    data = records(args)
    # The anchor of each question, from the model before training (its first k+1 tokens), in batches.
    with accelerator.main_process_first():
        anchors = iter_anchors(model, processor, [r["image"] for r in data], [r["question"] for r in data],
                               cache_dir=args.anchor_cache, progress=accelerator.is_main_process)  # fmt: skip
        for record, anchor in zip(data, anchors):
            record["anchor"] = anchor
    collate = VAGDPOCollator(processor, seed=args.seed, fixed_noise=True)

    if args.peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
        reference = None
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    loss_fn = VAGDPOLoss(beta=args.beta, sft_weight=args.sft_weight)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model, optimiser = accelerator.prepare(model, optimiser)
    model.train()
    log = open(args.log, "w") if args.log and accelerator.is_main_process else None
    share = args.batch_size // world
    for step in range(1, args.steps + 1):
        pairs = random.Random(args.seed + step).sample(data, args.batch_size)  # the same global batch everywhere
        batch = collate(pairs[rank * share : (rank + 1) * share])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        if reference is None:
            ref = reference_logps(accelerator.unwrap_model(model), batch, disable_adapter=True)
        else:
            ref = reference_logps(reference, batch)
        policy = sequence_logps(model, batch)
        loss, metrics = loss_fn(policy.chosen, policy.rejected, ref.chosen, ref.rejected, policy.chosen_nll)
        optimiser.zero_grad()
        accelerator.backward(loss)  # DDP averages the processes' gradients: the global batch's gradient
        optimiser.step()
        logged = {name: accelerator.reduce(value.detach(), "mean").item() for name, value in {"loss": loss, **metrics}.items()}
        if log is not None:
            log.write(json.dumps({"step": step, "processes": world, **logged}) + "\n")
        if accelerator.is_main_process and (step == 1 or step % 5 == 0 or step == args.steps):
            print(f"step {step:4d}  loss {logged['loss']:.4f}  margin {logged['rewards/margins']:+.4f}  "
                  f"accuracy {logged['rewards/accuracies']:.2f}", flush=True)
    if log is not None:
        log.close()
    accelerator.wait_for_everyone()  # leave together: a process that exits first can leave the other hanging in teardown
    accelerator.end_training()


if __name__ == "__main__":
    main()
