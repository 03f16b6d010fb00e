"""The ``adapt-hooks`` command: ``demo`` (the shipped shapes VLM, no download), ``run`` (a real
checkpoint on one image), ``eval`` (CHAIR, POPE or AMBER from local files, every method side by
side), ``debias`` (estimate a debias mask), ``check`` (is the installed transformers one the
guard works with) and ``coverage`` (which model types it supports). Bad
input ends with one clear line on stderr and exit status 2; a failed check with exit status 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import Anchor, DriftMonitor, RiskModel, __version__, compat, estimate_debias_mask
from .prompts import chat_prompt
from .running import guarded_generate
from .viz.report import drift_table, processor_box, write_pictures


class CommandError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


# -- shared steps -----------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise CommandError(f"--device {name}: {error}") from None


def _load(model_id: str, device: torch.device, dtype: str):
    """Model and processor of a checkpoint (local folder or hub id) through the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_id)
        model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CommandError(f"cannot load --model {model_id!r}: {reason}") from None
    return model.to(device).eval(), processor


def _image(path: str):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise CommandError(f"--image {path!r}: no such file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"--image {path!r}: not a readable image ({error})") from None


def _compare(model, processor, image, question: str, args) -> None:
    """Generate without and with steering, print both answers and the drift table (with each
    token's risk given ``--risk``), write pictures."""
    inputs = processor(images=image, text=chat_prompt(processor, question), return_tensors="pt").to(model.device)
    anchor = lambda: Anchor(k=args.k)  # noqa: E731 - a fresh anchor per run
    risk = RiskModel.load(args.risk, model) if getattr(args, "risk", None) else None
    plain, observed = guarded_generate(model, inputs, args.max_new_tokens, DriftMonitor(steer=False, risk=risk), anchor())
    decode = lambda ids: processor.batch_decode(ids, skip_special_tokens=True)[0].strip()  # noqa: E731
    if args.no_steer:
        run, answer = observed, decode(plain)
        print(f"answer (observed only): {answer}")
    else:
        steered, run = guarded_generate(model, inputs, args.max_new_tokens, DriftMonitor(tau=args.tau, alpha=args.alpha, risk=risk), anchor())
        width = max(len("without steering"), 16)
        print(f"{'without steering':<{width}}  {decode(plain)}")
        print(f"{'with steering':<{width}}  {decode(steered)}")
        plain = steered
    tokens = [processor.tokenizer.decode([t]) for t in plain[0, 1:].tolist()]
    threshold = None if risk is None else risk.meta.get("threshold")
    print(drift_table(run, tokens, threshold=threshold))
    settings = f"{args.model}: K {args.k}" + ("" if args.no_steer else f", τ {args.tau:g}, α {args.alpha:g}")
    for path in write_pictures(run, image, Path(args.out), box=processor_box(processor, image), tokens=tokens,
                               threshold=threshold, tau=None if args.no_steer else args.tau, title=settings):  # fmt: skip
        print(f"wrote {path}")


# -- commands ---------------------------------------------------------------------------------
def demo(args: argparse.Namespace) -> None:
    from .shapes import demo as shapes_demo

    shapes_demo.main(args.seed, args.k, args.tau, args.alpha, not args.no_steer, args.max_new_tokens, Path(args.out))


def run(args: argparse.Namespace) -> None:
    image = _image(args.image)
    device = _device(args.device)
    model, processor = _load(args.model, device, args.dtype)
    _compare(model, processor, image, args.prompt, args)


def _eval_model(name: str, device: torch.device, dtype: str):
    """``tiny`` (the random-weight tiny LLaVA), ``shapes`` (the shipped shapes VLM) or a checkpoint."""
    if name == "tiny":
        from .tiny import tiny_model
        from .tiny.llava import processor

        return tiny_model("llava", "sdpa").to(device).eval(), processor()
    if name == "shapes":
        from .shapes import model as shapes

        return shapes.load_model(attn_implementation="sdpa").to(device), shapes.load_processor()
    return _load(name, device, dtype)


def evaluate(args: argparse.Namespace) -> None:
    """Generate with every method on the benchmark's images, score, write JSON, markdown and a plot."""
    from .evaluation import methods as eval_methods
    from .evaluation import pope, runner

    names = eval_methods.parse_methods(args.methods)
    data = Path(args.data)
    if not data.is_dir():
        raise CommandError(f"--data {args.data!r}: no such folder")
    for flag in ("limit", "batch_size", "answer_tokens", "n_boot", "pope_images", "chair_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CommandError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    prompts = runner.Prompts(describe=args.prompt, question=args.question)
    if args.benchmark == "chair":
        tasks = [runner.chair_task(data, args.limit, prompts, args.max_new_tokens, args.vocabulary, args.chair_mentions == "every",
                                   args.chair_images, args.seed)]  # fmt: skip
    elif args.benchmark == "pope":
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        if not splits or set(splits) - set(pope.SPLITS):
            raise CommandError(f"--splits {args.splits!r}: choose among {', '.join(pope.SPLITS)}")
        tasks = runner.pope_tasks(data, args.limit, prompts, args.answer_tokens, args.seed, splits, args.pope_images, args.yes_no)
    else:
        tasks = runner.amber_tasks(data, args.limit, args.max_new_tokens, args.answer_tokens, args.yes_no)
    settings = {"data": str(data.resolve()), "limit": args.limit, "max_new_tokens": args.max_new_tokens,
                "answer_tokens": args.answer_tokens, "prompt": args.prompt, "question": args.question, "seed": args.seed,
                "splits": args.splits, "pope_images": args.pope_images, "chair_images": args.chair_images, "vocabulary": args.vocabulary,
                "dtype": args.dtype}  # fmt: skip
    out = Path(args.out)
    job = runner.Run(args.model, args.benchmark, tasks, names, out, args.batch_size, args.seed, args.n_boot, settings,
                     scoring={"yes_no": args.yes_no, "chair_mentions": args.chair_mentions})  # fmt: skip
    job.load()  # refuse a mismatching output file before loading the model
    model, processor = _eval_model(args.model, _device(args.device), args.dtype)
    record = job.execute(model, processor, progress=not args.no_progress)
    table = runner.markdown(record)
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    picture = runner.plot(record, out.with_suffix(".png"))
    print(f"wrote {picture}" if picture else "no plot: matplotlib is not installed (pip install \"adapt-hooks[plot]\")")


def debias(args: argparse.Namespace) -> None:
    device = _device(args.device)
    model, processor = _load(args.model, device, args.dtype)
    mask = estimate_debias_mask(model, processor, n=args.n, seed=args.seed, k=args.k)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    mask.save(args.out)
    print(f"wrote {args.out}: {mask!r}")


def check(args: argparse.Namespace) -> None:
    """Run the compatibility canary on the installed transformers; exit 1 when something changed."""
    from . import canary

    print(f"adapt-hooks {__version__}, transformers {compat.INSTALLED}, torch {torch.__version__}")
    results = canary.run()
    for finding in results:
        print(finding)
    failed = [f for f in results if not f.ok]
    if failed:
        raise CheckFailed(
            f"{len(failed)} of {len(results)} checks failed on transformers {compat.INSTALLED}: the guard would not work "
            f"as documented. Use transformers {compat.tested_range()} and report the lines above to adapt-hooks."
        )


def coverage(args: argparse.Namespace) -> None:
    """Print how the installed transformers' image-text-to-text model types are covered (markdown)."""
    from . import coverage as report

    print(f"adapt-hooks {__version__} on transformers {compat.INSTALLED}:\n")
    print(report.markdown(report.report()))


class CheckFailed(Exception):
    """``check`` found an internal that changed: printed as one line, exit status 1."""


def _common(parser: argparse.ArgumentParser, steering: bool = True, seed: bool = True) -> None:
    parser.add_argument("--k", type=int, default=5, help="anchor decode steps K (default: 5)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    if steering:
        parser.add_argument("--tau", type=float, default=0.6, help="drift threshold on AMC / anchor AMC (default: 0.6)")
        parser.add_argument("--alpha", type=float, default=0.5, help="strength of the anchor log-prior (default: 0.5)")
        parser.add_argument("--no-steer", action="store_true", help="observe only: never change the output")
        parser.add_argument("--max-new-tokens", type=int, default=24, help="new tokens to generate (default: 24)")
        parser.add_argument("--out", default="adapt-hooks-out", help="folder for the pictures (default: adapt-hooks-out)")


def _loading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id of a supported VLM")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights dtype")


def _default_prompt() -> str:
    from .evaluation.runner import DESCRIBE

    return DESCRIBE


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="adapt-hooks", description="Keep a VLM's attention on the image (ADAPT).")
    top.add_argument("--version", action="version", version=f"adapt-hooks {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="{demo,run,eval,debias,check,coverage}")
    p = commands.add_parser("demo", help="the shipped shapes VLM catching its own hallucination (no download)",
                            description="The shapes VLM shipped with the package names an object that is not in a "
                            "held-out scene: prints its answer word by word with the early-warning risk, the answers "
                            "under the guard and VCD, and writes scene.png, anchor.png, ve.png and drift.png. --seed "
                            "picks the scenes.")
    _common(p)
    p.set_defaults(handler=demo)
    p = commands.add_parser("run", help="a real checkpoint on one image, with and without steering",
                            description="Answer a question about an image with and without steering, print the drift "
                            "table and write anchor.png, ve.png and drift.png.")
    _loading(p)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="question about the image")
    p.add_argument("--risk", help="a risk model fitted for this model (adapt_hooks.fit_risk): print each token's risk")
    _common(p, seed=False)  # greedy decoding: nothing to seed
    p.set_defaults(handler=run)
    p = commands.add_parser("eval", help="CHAIR, POPE or AMBER from local files, every method side by side",
                            description="Generate with each method on the same images of a benchmark on disk (batched, "
                            "resumable from --out), then write every answer and the metrics with bootstrap 95 % "
                            "intervals and paired comparisons against plain (JSON), a markdown table (.md) and a plot "
                            "(.png, with matplotlib). --model tiny or shapes runs the package's own small models.")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id, or 'tiny' / 'shapes' (no download)")
    p.add_argument("--benchmark", required=True, choices=["chair", "pope", "amber"], help="which benchmark")
    p.add_argument("--data", required=True, help="the benchmark's folder (see docs/evaluation.md for the layout)")
    p.add_argument("--methods", default="plain,guard,pai,vcd",
                   help="comma-separated: plain, observe, guard, pai, pai-cfg, vcd, guard+vcd (default: plain,guard,pai,vcd)")
    p.add_argument("--out", required=True, help="output JSON file (also FILE.md and FILE.png); a run resumes from it")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (AMBER: N queries of each kind)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default: 8)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="new tokens of a description (default: 512)")
    p.add_argument("--answer-tokens", type=int, default=8, help="new tokens of a yes/no answer (default: 8)")
    p.add_argument("--yes-no", choices=("first", "pope"), default="first",
                   help="yes/no parser: the first standalone yes/no (default), or POPE's release rule ('no'/'not' in the "
                        "first sentence); changing it rescores the saved answers")  # fmt: skip
    p.add_argument("--prompt", default=_default_prompt(), help="the description prompt of CHAIR")
    p.add_argument("--question", default="Is there a {} in the image?", help="POPE question built from annotations ({} is the object; \"a {}\" reads \"an {}\" before a vowel)")
    p.add_argument("--splits", default="random,popular,adversarial", help="POPE splits (default: all three)")
    p.add_argument("--pope-images", type=int, default=500, help="images per built POPE split (default: 500)")
    p.add_argument("--chair-images", type=int, default=None,
                   help="CHAIR on a seeded sample of N images of the instances file (the usual protocol: 500); default: all")
    p.add_argument("--chair-mentions", choices=("every", "once"), default="every",
                   help="CHAIR counts every mention of an object (default, as the original script) or each object once "
                        "per caption; changing it rescores the saved answers")  # fmt: skip
    p.add_argument("--vocabulary", default="coco", choices=["coco", "categories"],
                   help="CHAIR's objects: the 80 COCO categories with synonyms, or the instances file's category names")
    p.add_argument("--seed", type=int, default=0, help="seed of the POPE sampling and of the bootstrap (default: 0)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default: 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights dtype")
    p.set_defaults(handler=evaluate)
    p = commands.add_parser("debias", help="estimate a debias mask on noise images",
                            description="Run the model on noise images and save its spatial-bias mask (safetensors).")
    _loading(p)
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--n", type=int, default=8, help="number of noise images (default: 8)")
    _common(p, steering=False)
    p.set_defaults(handler=debias)
    p = commands.add_parser("check", help="check that the installed transformers behaves as the guard expects",
                            description="Run a tiny model through every transformers internal the guard relies on "
                            "(cache keyword, prefill images, attention call, mask interface, reorder_cache) and name "
                            "what changed. Exit status 1 when something did.")
    p.set_defaults(handler=check)
    p = commands.add_parser("coverage", help="which of transformers' image-text-to-text model types the guard supports",
                            description="Classify every model type of the installed transformers' image-text-to-text "
                            "mapping: supported (an adapter and the conformance battery), generic-only (guard(model, "
                            "adapter='generic')) or not applicable (with the reason). Prints a markdown table.")
    p.set_defaults(handler=coverage)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if getattr(args, "max_new_tokens", 1) < 1:  # before any download
            raise CommandError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        args.handler(args)
    except CheckFailed as error:
        print(f"adapt-hooks check: {error}", file=sys.stderr)
        return 1
    except (CommandError, ValueError, TypeError, compat.CompatibilityError) as error:
        print(f"adapt-hooks {args.command}: {error}", file=sys.stderr)
        return 2
    return 0
