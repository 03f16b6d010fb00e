"""``adapt-hooks eval``: generate with every method on the same images, score, report.

A run is a list of *tasks* (CHAIR: one; POPE: one per split; AMBER: generative and
discriminative). A task is a list of :class:`Item` (a key, an image file, a prompt) and a scorer
that turns the answers into per-image counts (the bootstrap's units) and per-answer details.
Every method answers every item; answers are saved to the output JSON after every batch, and a
run started again with the same output file and settings generates only what is missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import amber, chair, coco, methods, pope, stats

DESCRIBE = "Please describe this image in detail."


@dataclass(frozen=True)
class Item:
    key: str
    image: Path
    prompt: str


@dataclass
class Task:
    """Items to answer, and how to score the answers (``answers[key]``)."""

    name: str
    items: list[Item]
    score: Callable[[dict[str, str]], tuple[np.ndarray, dict[str, dict]]]  # -> counts [units, k], details per key
    metric: stats.MetricFn
    max_new_tokens: int
    headline: tuple[str, ...] = ()
    full: int | None = None                # items without --limit (for the time of a full run)


@dataclass
class Prompts:
    describe: str = DESCRIBE
    question: str = pope.TEMPLATE           # for built POPE questions ({} is the object)


# -- finding files ------------------------------------------------------------------------------
def _one(folder: Path, patterns: Sequence[str], what: str, required: bool = True) -> Path | None:
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    if required:
        raise ValueError(f"--data {folder}: no {what} ({' or '.join(patterns)})")
    return None


def image_path(folder: Path, file_name: str) -> Path:
    """An image of the data folder: ``DIR/file_name``, ``DIR/images/...``, ``DIR/image/...`` or
    ``DIR/<COCO split>/...`` (the split read from a COCO file name such as ``COCO_val2014_...``)."""
    candidates = [folder / file_name, folder / "images" / file_name, folder / "image" / file_name]
    candidates += [folder / sub.name / file_name for sub in sorted(folder.iterdir()) if sub.is_dir()]
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(f"--data {folder}: image {file_name!r} not found (looked in {folder} and its subfolders)")


# -- the benchmarks -----------------------------------------------------------------------------
def chair_task(folder: Path, limit: int | None, prompts: Prompts, max_new_tokens: int, vocabulary: str = "coco",
               per_mention: bool = True, n_images: int | None = None, seed: int = 0) -> Task:  # fmt: skip
    """CHAIR on every image of the instances file, or on a seeded uniform sample of ``n_images``
    of them (the usual protocol: 500 of COCO val2014), then the first ``limit``."""
    instances = _one(folder, ["annotations/instances_*.json", "instances*.json"], "COCO instances file")
    captions = _one(folder, ["annotations/captions_*.json", "captions*.json"], "COCO captions file", required=False)
    data = coco.load_coco(instances, captions)
    vocab = coco.coco_vocabulary() if vocabulary == "coco" else coco.categories_vocabulary(data.categories.values())
    truth = data.truth(vocab)
    ids = data.image_ids
    if n_images is not None and n_images < len(ids):
        ids = sorted(int(i) for i in np.random.default_rng(seed).choice(ids, size=n_images, replace=False))
    full = len(ids)
    ids = ids[:limit] if limit else ids
    items = [Item(str(i), image_path(folder, data.files[i]), prompts.describe) for i in ids]

    def score(answers: dict[str, str]):
        details = {str(i): chair.caption_details(answers[str(i)], truth[i], vocab, per_mention=per_mention) for i in ids}
        return chair.count_matrix([details[str(i)] for i in ids]), details

    return Task("chair", items, score, chair.metrics_from_counts, max_new_tokens, ("CHAIR_s", "CHAIR_i", "recall"), full)


def pope_tasks(folder: Path, limit: int | None, prompts: Prompts, answer_tokens: int, seed: int,
               splits: Sequence[str] = pope.SPLITS, n_images: int = 500, yes_no: str = "first") -> list[Task]:  # fmt: skip
    tasks = []
    data = None
    for split in splits:
        released = _one(folder, [f"pope/*{split}*.json*", f"*pope*{split}*.json*"], "POPE file", required=False)
        if released is not None:
            questions = pope.read_questions(released)
        else:
            if data is None:
                instances = _one(folder, ["annotations/instances_*.json", "instances*.json"], "COCO instances file or pope/*.json")
                data = coco.load_coco(instances)
            questions = pope.build_questions(data, split, n_images=n_images, seed=seed)
            questions = [pope.Question(q.image, q.obj, q.label, pope.ask(prompts.question, q.obj), q.question_id) for q in questions]
        full = len(questions)
        if limit:
            keep = list(dict.fromkeys(q.image for q in questions))[:limit]
            questions = [q for q in questions if q.image in set(keep)]
        items = [Item(f"{split}/{n}", image_path(folder, q.image), q.prompt) for n, q in enumerate(questions)]
        tasks.append(Task(f"pope-{split}", items, _pope_scorer(split, questions, pope.PARSERS[yes_no]), pope.metrics_from_counts, answer_tokens,
                          ("accuracy", "F1", "yes_ratio"), full))  # fmt: skip
    return tasks


def _said(answer: str, parse) -> str | None:
    return {True: "yes", False: "no", None: None}[parse(answer)]


def _pope_scorer(split: str, questions: list[pope.Question], parse):
    def score(answers: dict[str, str]):
        texts = [answers[f"{split}/{n}"] for n in range(len(questions))]
        details = {f"{split}/{n}": {"object": q.obj, "label": "yes" if q.label else "no",
                                    "parsed": _said(t, parse)}
                   for n, (q, t) in enumerate(zip(questions, texts))}  # fmt: skip
        return pope.count_matrix(texts, questions, parse)[1], details

    return score


def amber_tasks(folder: Path, limit: int | None, max_new_tokens: int, answer_tokens: int, yes_no: str = "first") -> list[Task]:
    data = amber.load_amber(folder)
    parse = pope.PARSERS[yes_no]
    gen = [i for i in data.items if i.generative]
    dis = [i for i in data.items if not i.generative]
    families = {f: [i for i in dis if i.family == f] for f in amber.FAMILIES}
    full = {"generative": len(gen), **{f: len(chosen) for f, chosen in families.items()}, "all": len(dis)}
    if limit:                                  # the first N of each task, so that each is timed
        gen = gen[:limit]
        families = {f: chosen[:limit] for f, chosen in families.items()}
    families["all"] = sorted((i for chosen in families.values() for i in chosen), key=lambda i: i.id)
    vocab = data.vocabulary()
    tasks = []
    if gen:
        def score_gen(answers):
            details = {f"g/{i.id}": amber.description_details(answers[f"g/{i.id}"], i, data, vocab) for i in gen}
            return np.array([details[f"g/{i.id}"]["counts"] for i in gen], float), details

        items = [Item(f"g/{i.id}", image_path(folder, i.image), i.query) for i in gen]
        tasks.append(Task("amber-generative", items, score_gen, amber.generative_from_counts, max_new_tokens,
                          ("CHAIR", "Cover", "Hal", "Cog"), full["generative"]))  # fmt: skip
    for family, chosen in families.items():
        if not chosen:
            continue

        def score_dis(answers, chosen=chosen):
            texts = [answers[f"d/{i.id}"] for i in chosen]
            details = {f"d/{i.id}": {"type": i.type, "label": i.truth, "parsed": _said(t, parse)} for i, t in zip(chosen, texts)}
            return amber.discriminative_matrix(texts, chosen, parse)[1], details

        items = [Item(f"d/{i.id}", image_path(folder, i.image), i.query) for i in chosen]
        tasks.append(Task(f"amber-{family}", items, score_dis, amber.discriminative_from_counts, answer_tokens,
                          ("accuracy", "precision", "recall", "F1"), full[family]))  # fmt: skip
    return tasks


# -- generation ---------------------------------------------------------------------------------
def _images(items: Sequence[Item]):
    from PIL import Image

    out = []
    for item in items:
        with Image.open(item.image) as image:
            out.append(image.convert("RGB"))
    return out


@torch.no_grad()
def generate(model, processor, items: Sequence[Item], method: str, max_new_tokens: int) -> list[str]:
    """Greedy answers of one batch (left-padded) under ``method``."""
    from ..prompts import chat_prompt

    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    texts = [chat_prompt(processor, item.prompt) for item in items]
    inputs = processor(images=_images(items), text=texts, padding=True, return_tensors="pt").to(model.device)
    with methods.context(method, model):
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]


def _save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class Run:
    """One ``adapt-hooks eval``: what it runs, and where it writes."""

    model_name: str
    benchmark: str
    tasks: list[Task]
    method_names: list[str]
    out: Path
    batch_size: int = 8
    seed: int = 0
    n_boot: int = stats.N_BOOT
    settings: dict = field(default_factory=dict)
    scoring: dict = field(default_factory=dict)      # how answers are read: may change between runs of one file

    def load(self) -> dict:
        """The output file's record when it matches this run's settings (answers are reused), else a new one."""
        fresh = {"benchmark": self.benchmark, "model": self.model_name, "settings": self.settings,
                 "methods": {m: methods.settings(m) for m in self.method_names}, "answers": {}, "seconds": {}}  # fmt: skip
        if not self.out.is_file():
            return fresh
        old = json.loads(self.out.read_text(encoding="utf-8"))
        same = all(old.get(k) == fresh[k] for k in ("benchmark", "model", "settings"))
        if not same:
            raise ValueError(f"--out {self.out} holds a run with other settings ({old.get('model')}, {old.get('benchmark')}, "
                             f"{old.get('settings')}): use another --out, or delete it to start again")  # fmt: skip
        for m in self.method_names:
            if m in old.get("methods", {}) and old["methods"][m] != fresh["methods"][m]:
                raise ValueError(f"--out {self.out}: method {m!r} ran with other settings ({old['methods'][m]})")
        old["methods"] = {**old.get("methods", {}), **fresh["methods"]}
        old.setdefault("seconds", {})
        return old

    def execute(self, model, processor, progress: bool = True) -> dict:
        from tqdm.auto import tqdm

        record = self.load()
        todo = [(m, t, i) for m in self.method_names for t in self.tasks for i in t.items
                if i.key not in record["answers"].get(m, {})]  # fmt: skip
        bar = tqdm(total=len(todo), desc=f"eval {self.benchmark}", unit="answer", disable=not progress)
        for method in self.method_names:
            answers = record["answers"].setdefault(method, {})
            for task in self.tasks:
                missing = [i for i in task.items if i.key not in answers]
                for start in range(0, len(missing), self.batch_size):
                    batch = missing[start : start + self.batch_size]
                    bar.set_postfix_str(f"{method} {task.name}")
                    began = time.perf_counter()
                    for item, text in zip(batch, generate(model, processor, batch, method, task.max_new_tokens)):
                        answers[item.key] = text
                    spent = record["seconds"].setdefault(method, {}).setdefault(task.name, [0.0, 0])
                    spent[0] += time.perf_counter() - began
                    spent[1] += len(batch)
                    _save(self.out, record)
                    bar.update(len(batch))
        bar.close()
        self.score(record)
        _save(self.out, record)
        return record

    def score(self, record: dict) -> None:
        """Metrics with bootstrap intervals, and each method against plain on the same images."""
        baseline = "plain" if "plain" in self.method_names else self.method_names[0]
        record["metrics"], record["paired"], record["details"] = {}, {}, {}
        counts = {}
        for method in self.method_names:
            for task in self.tasks:
                c, details = task.score(record["answers"][method])
                counts[method, task.name] = c
                record["details"].setdefault(method, {}).update(details)
                record["metrics"].setdefault(method, {})[task.name] = stats.summarize(c, task.metric, n_boot=self.n_boot, seed=self.seed)
        for method in self.method_names:
            if method == baseline:
                continue
            for task in self.tasks:
                record["paired"].setdefault(method, {})[task.name] = stats.paired(
                    counts[method, task.name], counts[baseline, task.name], task.metric, n_boot=self.n_boot, seed=self.seed
                )
        record["baseline"] = baseline
        record["scoring"] = dict(self.scoring)
        record["headline"] = {t.name: list(t.headline) for t in self.tasks}
        record["sizes"] = {t.name: {"run": len(t.items), "full": t.full or len(t.items)} for t in self.tasks}


# -- reports ------------------------------------------------------------------------------------
def markdown(record: dict) -> str:
    """Tables: every task's metrics per method (value [95 % interval]), then method − baseline."""
    lines = [f"# {record['benchmark']} on {record['model']}", ""]
    for task, names in record["headline"].items():
        lines += [f"## {task}", "", "| method | " + " | ".join(names) + " | s / answer |",
                  "|---|" + "---|" * (len(names) + 1)]  # fmt: skip
        for method, tasks in record["metrics"].items():
            cells = [_cell(tasks[task][n]["value"], tasks[task][n]["low"], tasks[task][n]["high"]) for n in names]
            seconds, n = record.get("seconds", {}).get(method, {}).get(task, [float("nan"), 0])
            timed = f"{seconds / n:.3f}" if n else "–"       # AMBER's "all": answered by its families
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {timed} |")
        if record["paired"]:
            lines += ["", f"Paired against {record['baseline']} on the same images (difference [95 % interval]):", "",
                      "| method | " + " | ".join(f"Δ {n}" for n in names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
            for method, tasks in record["paired"].items():
                cells = [_cell(tasks[task][n]["diff"], tasks[task][n]["low"], tasks[task][n]["high"], sign=True) for n in names]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    hours = full_run_hours(record)
    if hours:
        lines += ["## Time", "", "Measured seconds per answer, and the hours a run of the whole benchmark would take at that speed:",
                  "", "| method | answers here | s / answer | full run (h) |", "|---|---|---|---|"]  # fmt: skip
        for method, (answers, seconds, full) in hours.items():
            lines.append(f"| {method} | {answers} | {seconds / answers:.3f} | {full:.3g} |")
        lines.append("")
    return "\n".join(lines)


def full_run_hours(record: dict) -> dict[str, tuple[int, float, float]]:
    """Per method: answers generated (timed), their seconds, and the hours every item of the
    benchmark (without ``--limit``) would take at each task's measured seconds per answer. Items
    shared by two tasks (AMBER's families and ``all``) are timed, and counted, once."""
    out = {}
    sizes = record.get("sizes", {})
    for method, tasks in record.get("seconds", {}).items():
        timed = [(tasks[t][0], tasks[t][1], sizes[t]["full"]) for t in sizes if t in tasks and tasks[t][1]]
        if timed:
            answers, seconds = sum(n for _, n, _ in timed), sum(s for s, _, _ in timed)
            out[method] = (answers, seconds, sum(s / n * full for s, n, full in timed) / 3600)
    return out


def _cell(value: float, low: float, high: float, sign: bool = False) -> str:
    fmt = "+.3f" if sign else ".3f"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def plot(record: dict, path: Path) -> Path | None:
    """Bars of each task's headline metrics per method with their 95 % intervals (needs
    matplotlib; ``None`` without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = list(record["headline"])
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    method_names = list(record["metrics"])
    for ax, task in zip(axes[0], tasks):
        names = record["headline"][task]
        width = 0.8 / len(method_names)
        for j, method in enumerate(method_names):
            m = record["metrics"][method][task]
            values = np.array([m[n]["value"] for n in names])
            errors = np.array([[m[n]["value"] - m[n]["low"] for n in names], [m[n]["high"] - m[n]["value"] for n in names]])
            ax.bar(np.arange(len(names)) + j * width, values, width, yerr=np.clip(errors, 0, None), capsize=2, label=method)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_title(task)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
