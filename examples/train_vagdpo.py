"""Fine-tune a VLM with VAG-DPO: chosen answers on anchor-enhanced images, rejected (hallucinated)
answers on noise-injected images.

Runs as is on a tiny random-weight LLaVA (CPU, seconds):

    python examples/train_vagdpo.py

and on a real checkpoint with a JSON-lines file of {"image", "question", "chosen", "rejected"}
records (image paths relative to the file):

    python examples/train_vagdpo.py --model llava-hf/llava-1.5-7b-hf --data pairs.jsonl \
        --device cuda --dtype bfloat16 --peft --steps 500 --batch-size 4 --lr 5e-6
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path

import torch

import adapt_hooks
from adapt_hooks import VAGDPOCollator, VAGDPOLoss, compute_anchor, reference_logps, sequence_logps


def load(args):
    """Model and processor: the tiny LLaVA by default, else any checkpoint through the Auto classes."""
    if args.model == "tiny":
        from adapt_hooks.tiny import tiny_model
        from adapt_hooks.tiny.llava import processor

        return tiny_model("llava", "sdpa", seed=args.seed), processor()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
    return model.to(args.device), AutoProcessor.from_pretrained(args.model)


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="checkpoint path or hub id (default: the tiny LLaVA)")
    parser.add_argument("--data", help="JSON lines of {image, question, chosen, rejected}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--sft-weight", type=float, default=0.0)
    parser.add_argument("--peft", action="store_true", help="train a LoRA adapter; the reference is the adapter disabled")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    model, processor = load(args)
    data = records(args)
    collate = VAGDPOCollator(processor, seed=args.seed)
    # The anchor of each question, from the model before training (spec section 4: VE image).
    for record in data:
        inputs = processor(images=record["image"], text=collate.prompt(record["question"]), return_tensors="pt")
        record["anchor"] = compute_anchor(model.eval(), inputs.to(args.device))

    if args.peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
        reference = model
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    loss_fn = VAGDPOLoss(beta=args.beta, sft_weight=args.sft_weight)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    for step in range(1, args.steps + 1):
        batch = collate(random.Random(args.seed + step).sample(data, args.batch_size))
        batch = {k: v.to(args.device) for k, v in batch.items()}
        ref = reference_logps(reference, batch, disable_adapter=args.peft)
        policy = sequence_logps(model, batch)
        loss, metrics = loss_fn(policy.chosen, policy.rejected, ref.chosen, ref.rejected, policy.chosen_nll)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step == 1 or step % 5 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.4f}  margin {metrics['rewards/margins'].item():+.4f}  "
                  f"accuracy {metrics['rewards/accuracies'].item():.2f}", flush=True)


if __name__ == "__main__":
    main()
