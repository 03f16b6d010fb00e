"""The benchmark evaluators (adapt_hooks.evaluation) against hand-computed values, on COCO-, POPE-
and AMBER-format fixtures written on the fly, and ``adapt-hooks eval`` end to end on the tiny model."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt_hooks.evaluation import amber, chair, coco, pope, runner, stats

SRC = Path(__file__).resolve().parents[1] / "src"


# -- fixtures -----------------------------------------------------------------------------------
def _image(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 48), colour).save(path)


#: image id -> instance categories; the captions add objects ("a cup" in image 1).
OBJECTS = {1: ["dog", "person", "dining table"], 2: ["cat", "couch"], 3: ["dog", "person", "car", "bicycle"],
           4: ["person", "car", "bus"]}  # fmt: skip
CAPTIONS = {1: ["A man and his dog at a dining table with a cup."], 2: ["A cat sleeping on a sofa."],
            3: ["People walking a dog past cars."], 4: ["A bus and a car in the street."]}  # fmt: skip
NAMES = ["person", "bicycle", "car", "bus", "cat", "dog", "couch", "dining table", "cup", "bird"]


def write_coco(folder: Path, images=(1, 2, 3, 4)) -> Path:
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    ids = {n: i + 1 for i, n in enumerate(NAMES)}
    files = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in images]
    annotations = [{"id": 100 * i + j, "image_id": i, "category_id": ids[c], "bbox": [0, 0, 4, 4]}
                   for i in images for j, c in enumerate(OBJECTS[i])]  # fmt: skip
    captions = [{"id": i, "image_id": i, "caption": c} for i in images for c in CAPTIONS[i]]
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": files, "annotations": annotations, "categories": categories}))
    (folder / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": files, "annotations": captions}))
    for n, f in enumerate(files):
        _image(folder / "val2014" / f["file_name"], (40 * n, 200 - 40 * n, 90))
    return folder


@pytest.fixture
def coco_dir(tmp_path):
    return write_coco(tmp_path / "coco")


# -- the caption parser -------------------------------------------------------------------------
def test_vocabulary_has_the_80_categories_and_no_ambiguous_phrase():
    assert len(coco.SYNONYMS) == 80
    vocabulary = coco.coco_vocabulary()
    owners = Counter()
    for category, names in coco.SYNONYMS.items():
        for name in {category, *names}:
            owners[tuple(coco.words(name))] += 1
    assert max(owners.values()) == 1
    assert vocabulary.phrases[("people",)] == "person" and vocabulary.phrases[("knives",)] == "knife"


def test_parser_takes_compounds_whole_and_plurals():
    vocabulary = coco.coco_vocabulary()
    text = "Two men eat hot dogs beside a teddy bear, a dining table and three dogs; a stop sign."
    assert [(m.phrase, m.category) for m in vocabulary.mentions(text)] == [
        ("men", "person"), ("hot dogs", "hot dog"), ("teddy bear", "teddy bear"), ("dining table", "dining table"),
        ("dogs", "dog"), ("stop sign", "stop sign")]  # fmt: skip
    assert vocabulary.objects("A puppy and a kitten on a sofa.") == {"dog", "cat", "couch"}
    # CHAIR's special cases: a qualified animal or vehicle is not also a person
    text = "A baby elephant, two adult giraffes and a passenger jet; a baby with a laptop computer."
    assert [m.category for m in vocabulary.mentions(text)] == ["elephant", "giraffe", "airplane", "person", "laptop"]
    assert coco.plural("bus") == "buses" and coco.plural("pony") == "ponies" and coco.plural("toy") == "toys"


# -- CHAIR --------------------------------------------------------------------------------------
def test_chair_by_hand(coco_dir):
    data = coco.load_coco(coco_dir / "annotations/instances_val2014.json", coco_dir / "annotations/captions_val2014.json")
    truth = data.truth()
    assert truth[1] == {"dog", "person", "dining table", "cup"}  # the reference caption adds the cup
    assert truth[2] == {"cat", "couch"}
    captions = {
        1: "A man with a dog and a frisbee at the table.",    # person, dog, frisbee (h), dining table
        2: "A cat on a couch next to a dog and a dog bowl.",  # cat, couch, dog (h), bowl (h)
        3: "A person riding a bike next to a car.",           # person, bicycle, car: no hallucination
        4: "An empty street.",                                # nothing named
    }
    listed = ([captions[i] for i in (1, 2, 3, 4)], [truth[i] for i in (1, 2, 3, 4)])
    metrics, details = chair.chair(*listed)
    # every mention (caption 2 names the dog twice): named 4 + 5 + 3 + 0 = 12; hallucinated 1 + 3 = 4;
    # captions with one: 2 of 4; truth: 4 + 2 + 4 + 3 = 13 (image 3: dog, person, car, bicycle);
    # covered (each true object once): 3 + 2 + 3 + 0 = 8
    assert metrics["CHAIR_i"] == pytest.approx(4 / 12)
    assert metrics["CHAIR_s"] == pytest.approx(2 / 4)
    assert metrics["recall"] == pytest.approx(8 / 13)
    assert metrics["objects_per_caption"] == pytest.approx(12 / 4)
    assert details[1]["hallucinated"] == ["dog", "dog", "bowl"] and details[0]["hallucinated"] == ["frisbee"]
    once, details = chair.chair(*listed, per_mention=False)
    # each object once per caption: named 4 + 4 + 3 = 11; hallucinated 1 + 2 = 3
    assert once["CHAIR_i"] == pytest.approx(3 / 11) and once["objects_per_caption"] == pytest.approx(11 / 4)
    assert once["CHAIR_s"] == metrics["CHAIR_s"] and once["recall"] == metrics["recall"]
    assert details[1]["hallucinated"] == ["bowl", "dog"]
    every, _ = chair.chair(["A dog, another dog and a cat."], [{"dog"}])
    assert every["CHAIR_i"] == pytest.approx(1 / 3)  # dog, dog, cat: every mention counts (the original script)
    once, _ = chair.chair(["A dog, another dog and a cat."], [{"dog"}], per_mention=False)
    assert once["CHAIR_i"] == pytest.approx(1 / 2)


def test_chair_task_samples_images_with_the_seed(coco_dir):
    prompts = runner.Prompts()
    every = runner.chair_task(coco_dir, None, prompts, 8)
    assert [i.key for i in every.items] == ["1", "2", "3", "4"] and every.full == 4
    draws = {tuple(i.key for i in runner.chair_task(coco_dir, None, prompts, 8, n_images=2, seed=s).items) for s in range(20)}
    assert all(len(d) == 2 and set(d) <= {"1", "2", "3", "4"} and list(d) == sorted(d) for d in draws) and len(draws) > 1
    sample = runner.chair_task(coco_dir, 1, prompts, 8, n_images=3, seed=5)
    again = runner.chair_task(coco_dir, None, prompts, 8, n_images=3, seed=5)
    assert sample.full == 3 and [i.key for i in sample.items] == [i.key for i in again.items][:1]  # --limit after the draw


# -- POPE ---------------------------------------------------------------------------------------
def test_yes_no_parser():
    assert pope.parse_yes_no("Yes, there is a dog.") is True
    assert pope.parse_yes_no("No. Yes, I mean...") is False
    assert pope.parse_yes_no("There is no dog, yes.") is False   # the first standalone word decides
    assert pope.parse_yes_no("Eyes closed; nothing, yesterday") is None  # not standalone
    assert pope.parse_yes_no("I cannot tell.") is None


def test_release_yes_no_rule():
    """POPE's evaluate.py: "no" when the first sentence has the word no / No / not, else "yes"."""
    rule = pope.parse_like_release
    assert rule("No") is False and rule("Yes.") is True and rule("I cannot tell.") is True
    assert rule("Yes, but there is no dog.") is False             # differs from the first-word parser
    assert pope.parse_yes_no("Yes, but there is no dog.") is True
    assert rule("There is not a dog") is False and rule("NO") is True  # only these spellings count
    assert rule("Yes. There is no cat.") is True                   # only the first sentence is read
    assert rule("No, there isn't.") is False and rule("Nope") is True
    assert set(pope.PARSERS) == {"first", "pope"}


def test_pope_metrics_by_hand():
    questions = [pope.Question("a.jpg", "dog", True), pope.Question("a.jpg", "cat", False),
                 pope.Question("b.jpg", "car", True), pope.Question("b.jpg", "bus", False),
                 pope.Question("c.jpg", "cup", True)]  # fmt: skip
    answers = ["Yes.", "yes", "no", "No, there is not.", "I don't know"]  # tp, fp, fn, tn, unparsed -> fn
    m = pope.pope(answers, questions)
    # tp 1, fp 1, fn 2, tn 1
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["F1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m["yes_ratio"] == pytest.approx(2 / 5)
    assert m["unparsed"] == pytest.approx(1 / 5)
    images, counts = pope.count_matrix(answers, questions)
    assert images == ["a.jpg", "b.jpg", "c.jpg"]
    assert counts.tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 0, 1]]


def test_pope_sampling_rules(coco_dir):
    data = coco.load_coco(coco_dir / "annotations/instances_val2014.json")
    # frequencies (images containing): person 3, dog 2, car 2, others 1; cup and bird 0
    assert pope.frequencies(data.objects)["person"] == 3
    rng = np.random.default_rng(0)
    freq, co = pope.frequencies(data.objects), pope.cooccurrence(data.objects)
    categories = sorted(data.categories.values())
    # image 2 (cat, couch): the most frequent absent: person 3, then car 2 and dog 2 (by name)
    assert pope.negatives("popular", {"cat", "couch"}, categories, 3, rng, freq, co) == ["person", "car", "dog"]
    # image 4 (person, car, bus), asked in that order: with person, dog co-occurs in 2 images (1, 3),
    # dining table and bicycle in 1 -> dog; with car, dog (taken) and bicycle in 1 -> bicycle; bus
    # co-occurs only with present objects -> one of the absent ones left, drawn
    present = {"person", "car", "bus"}
    adversarial = pope.negatives("adversarial", present, categories, 3, rng, freq, co, positives=["person", "car", "bus"])
    assert adversarial[:2] == ["dog", "bicycle"] and adversarial[2] in {"cat", "couch", "dining table", "cup", "bird"}
    # asked in another order, each takes its own partner: car first -> bicycle and dog tie at 1, by name
    assert pope.negatives("adversarial", present, categories, 2, rng, freq, co, positives=["car", "person"]) == ["bicycle", "dog"]
    rand = pope.negatives("random", {"person", "car", "bus"}, categories, 3, rng, freq, co)
    assert len(set(rand)) == 3 and not set(rand) & {"person", "car", "bus"}
    built = pope.build_questions(data, "adversarial", n_images=10, n_per_side=3, seed=1)
    # images with at least 3 objects: 1, 3, 4 -> 3 images x 6 questions, alternating yes/no
    assert len(built) == 18 and [q.label for q in built[:4]] == [True, False, True, False]
    image4 = [q for q in built if q.image.endswith("4.jpg")]
    asked = [q.obj for q in image4 if q.label]
    assert sorted(asked) == ["bus", "car", "person"]
    negatives = [q.obj for q in image4 if not q.label]
    for k, (yes, no) in enumerate(zip(asked, negatives)):  # each "no" is its "yes" object's strongest absent partner
        partners = {c: n for c, n in co[yes].items() if c not in present and c not in negatives[:k]}
        assert no == min(partners, key=lambda c: (-partners[c], c)) if partners else no not in present | set(negatives[:k])
    assert built[0].prompt == pope.ask(pope.TEMPLATE, built[0].obj)
    assert pope.build_questions(data, "random", seed=5) == pope.build_questions(data, "random", seed=5)


def test_questions_say_an_before_a_vowel():
    assert pope.ask(pope.TEMPLATE, "oven") == "Is there an oven in the image?"
    assert pope.ask(pope.TEMPLATE, "dog") == "Is there a dog in the image?"
    assert pope.ask("Do you see a {} here?", "apple") == "Do you see an apple here?"
    assert pope.ask("{}?", "apple") == "apple?"
    assert pope.Question("x.jpg", "umbrella", True).prompt == "Is there an umbrella in the image?"


def test_read_released_pope_file(tmp_path):
    rows = [{"question_id": 1, "image": "x.jpg", "text": "Is there a snowboard in the image?", "label": "yes"},
            {"question_id": 2, "image": "x.jpg", "text": "Is there an apple in the image?", "label": "no"}]  # fmt: skip
    path = tmp_path / "coco_pope_random.json"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    questions = pope.read_questions(path)
    assert [(q.obj, q.label, q.question_id) for q in questions] == [("snowboard", True, 1), ("apple", False, 2)]
    path.write_text(json.dumps(rows))  # a JSON list reads the same
    assert pope.read_questions(path) == questions


# -- AMBER --------------------------------------------------------------------------------------
def write_amber(folder: Path) -> Path:
    queries = [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."},
               {"id": 2, "image": "AMBER_2.jpg", "query": "Describe this image."},
               {"id": 3, "image": "AMBER_1.jpg", "query": "Is there a dog in this image?"},
               {"id": 4, "image": "AMBER_2.jpg", "query": "Is the tree green in this image?"},
               {"id": 5, "image": "AMBER_2.jpg", "query": "Is there direct contact between the man and umbrella?"},
               {"id": 6, "image": "AMBER_1.jpg", "query": "Is there a car in this image?"}]  # fmt: skip
    # the release's annotations.json has an "id" per entry; 'relation' is a type the release uses as is
    annotations = [{"id": 1, "type": "generative", "truth": ["dog", "grass", "tree"], "hallu": ["person", "ball"]},
                   {"id": 2, "type": "generative", "truth": ["man", "umbrella", "person", "man"], "hallu": ["car"]},
                   {"id": 3, "type": "discriminative-hallucination", "truth": "yes"},
                   {"id": 4, "type": "discriminative-attribute-state", "truth": "no"},
                   {"id": 5, "type": "relation", "truth": "yes"},
                   {"id": 6, "type": "discriminative-hallucination", "truth": "no"}]  # fmt: skip
    relation = {"dog": [], "grass": ["lawn"], "tree": [], "man": ["person"], "person": ["people"], "umbrella": [],
                "ball": [], "car": ["vehicle"], "camera": []}  # fmt: skip
    (folder / "query").mkdir(parents=True)
    (folder / "query" / "query_all.json").write_text(json.dumps(queries))
    (folder / "annotations.json").write_text(json.dumps(annotations))
    (folder / "relation.json").write_text(json.dumps(relation))
    (folder / "safe_words.txt").write_text("camera\nline")
    _image(folder / "image" / "AMBER_1.jpg", (10, 120, 30))
    _image(folder / "image" / "AMBER_2.jpg", (90, 90, 200))
    return folder


AMBER_DESCRIPTIONS = ["A dog on the lawn chasing a ball near a tree. Another dog and a camera.",
                      "A person with an umbrella next to a vehicle."]  # fmt: skip


def test_amber_generative_by_hand(tmp_path):
    data = amber.load_amber(write_amber(tmp_path / "amber"))
    gen = [i for i in data.items if i.generative]
    assert [i.family for i in data.items if not i.generative] == ["existence", "attribute", "relation", "existence"]
    metrics, details = amber.generative(AMBER_DESCRIPTIONS, gen, data)
    # 1: dog, lawn (-> grass), ball (hallucinated, a hallu entry), tree, dog, camera (a safe word): 6 named, 1
    #    hallucinated, truth 3/3 covered, hallu 1/2 named.
    # 2: person (-> the first "man" entry: associated words are matched before the entries), umbrella, vehicle
    #    (-> car, hallucinated): 3 named, 1 hallucinated, truth 2/4 covered ("person" and the second "man"
    #    never are), hallu 1/1.
    assert details[0]["objects"] == ["dog", "lawn", "ball", "tree", "dog", "camera"]
    assert details[0]["hallucinated"] == ["ball"] and details[0]["covered"] == ["dog", "grass", "tree"]
    assert details[1]["covered"] == ["man", "umbrella"] and details[1]["cognitive"] == ["car"]
    assert metrics["CHAIR"] == pytest.approx(2 / 9)
    assert metrics["Cover"] == pytest.approx(5 / 7)
    assert metrics["Hal"] == pytest.approx(2 / 2)
    assert metrics["Cog"] == pytest.approx(2 / 3)


def _release_counts(nouns, truth, hallu, association, safe):
    """The release script's bookkeeping, written out independently: one flag per entry (truth /
    hallu), associated words listed before the entries, each word marking the first it matches."""
    def marker(entries):
        words = [w for e in entries for w in association[e]] + list(entries)
        owner = [k for k, e in enumerate(entries) for _ in association[e]] + list(range(len(entries)))
        return words, owner, [0] * len(entries)

    safe_words, safe_owner, covered = marker(truth)
    ha_words, ha_owner, cognitive = marker(hallu)
    hallucinated = 0
    for noun in nouns:
        if noun in safe:
            continue
        if noun in safe_words:
            covered[safe_owner[safe_words.index(noun)]] = 1
            continue
        if noun in ha_words:
            cognitive[ha_owner[ha_words.index(noun)]] = 1
        hallucinated += 1
    return [len(nouns), hallucinated, int(hallucinated > 0), len(truth), sum(covered), len(hallu), sum(cognitive), 1]


def test_amber_generative_matches_the_release_bookkeeping(tmp_path):
    """On many random descriptions over the fixture's vocabulary, the counts equal an independent
    rewrite of the release script's bookkeeping applied to the same words."""
    data = amber.load_amber(write_amber(tmp_path / "amber"))
    gen = [i for i in data.items if i.generative]
    vocab = data.vocabulary()
    words = ["dog", "lawn", "grass", "person", "people", "man", "vehicle", "car", "camera", "ball", "umbrella", "tree", "sky"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        item = gen[rng.integers(len(gen))]
        text = " and ".join(rng.choice(words, size=rng.integers(0, 8)))
        nouns = [m.category for m in vocab.mentions(text)]
        expected = _release_counts(nouns, item.truth, item.hallu, data.association, data.safe_words)
        assert amber.description_details(text, item, data, vocab)["counts"] == expected, text


def test_amber_discriminative_no_is_positive(tmp_path):
    data = amber.load_amber(write_amber(tmp_path / "amber"))
    dis = [i for i in data.items if not i.generative]
    answers = ["Yes, there is a dog.", "No.", "I cannot tell.", "Yes"]  # right, right "no", unparsed, wrong
    metrics = amber.discriminative(answers, dis)
    # correct 2 of 4; answered "no" 1, of which right 1; true "no" 2
    assert metrics == pytest.approx({"accuracy": 0.5, "precision": 1.0, "recall": 0.5, "F1": 2 / 3, "unparsed": 0.25})
    images, counts = amber.discriminative_matrix(answers, dis)
    assert images == ["AMBER_1.jpg", "AMBER_2.jpg"] and counts.sum(0).tolist() == [2, 1, 1, 2, 4, 1]


def test_amber_reads_annotations_without_ids(tmp_path):
    folder = write_amber(tmp_path / "amber")
    rows = json.loads((folder / "annotations.json").read_text())
    (folder / "annotations.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "id"} for r in rows]))
    assert amber.load_amber(folder).items == amber.load_amber(write_amber(tmp_path / "again")).items


# -- the bootstrap ------------------------------------------------------------------------------
def test_bootstrap_matches_the_exact_resampling_distribution():
    """For 4 images every one of the 4**4 equally likely resamples can be enumerated: the
    bootstrap's replicates of a ratio metric must follow that exact distribution."""
    counts = np.array([[1, 3], [0, 2], [2, 2], [1, 5]], float)  # hallucinated, named

    def metric(s):
        return {"r": stats.ratio(s[..., 0], s[..., 1])}

    exact = np.array([metric(counts[list(idx)].sum(0))["r"] for idx in itertools.product(range(4), repeat=4)])
    boot = stats.replicates(counts, metric, stats.replicate_weights(4, 40_000, seed=3))["r"]
    for value in np.unique(exact):
        assert np.mean(boot <= value + 1e-12) == pytest.approx(np.mean(exact <= value + 1e-12), abs=0.01)
    summary = stats.summarize(counts, metric, n_boot=40_000, seed=3)["r"]
    assert summary["value"] == pytest.approx(4 / 12)
    low, high = np.percentile(exact, [2.5, 97.5])
    assert summary["low"] == pytest.approx(low, abs=0.03) and summary["high"] == pytest.approx(high, abs=0.03)
    assert stats.summarize(counts, metric, n_boot=500, seed=3) == stats.summarize(counts, metric, n_boot=500, seed=3)


def test_bootstrap_of_a_mean_has_the_known_spread():
    """The bootstrap variance of a mean of n values is their population variance / n."""
    values = np.random.default_rng(0).normal(size=50)
    counts = np.stack([values, np.ones_like(values)], 1)
    boot = stats.replicates(counts, lambda s: {"m": s[..., 0] / s[..., 1]}, stats.replicate_weights(50, 20_000, 1))["m"]
    assert boot.var() == pytest.approx(values.var() / 50, rel=0.05)


def test_paired_interval_is_the_interval_of_the_difference_on_shared_resamples():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, size=(200, 1)).astype(float)
    better = base.copy()
    better[:20] = 0  # 20 images fixed, the rest identical
    counts = lambda c: np.concatenate([c, np.ones_like(c)], 1)  # noqa: E731
    metric = lambda s: {"rate": stats.ratio(s[..., 0], s[..., 1])}  # noqa: E731
    result = stats.paired(counts(better), counts(base), metric, n_boot=2000, seed=0)["rate"]
    assert result["diff"] == pytest.approx(-base[:20].sum() / 200)
    assert result["high"] <= 0  # the method never does worse on any resample
    a = stats.summarize(counts(better), metric, n_boot=2000, seed=0)["rate"]
    assert result["high"] - result["low"] < a["high"] - a["low"]  # shared variation cancels
    with pytest.raises(ValueError):
        stats.paired(counts(better)[:10], counts(base), metric)


# -- adapt-hooks eval end to end ----------------------------------------------------------------
def _cli(*args, cwd):
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "adapt_hooks", "eval", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)  # fmt: skip


def test_eval_chair_and_pope_on_the_tiny_model_resume(tmp_path):
    data = write_coco(tmp_path / "coco", images=(1, 3))
    out = tmp_path / "chair.json"
    args = ["--model", "tiny", "--benchmark", "chair", "--data", data, "--methods", "plain,observe,vcd",
            "--max-new-tokens", "6", "--batch-size", "2", "--n-boot", "50", "--out", out]  # fmt: skip
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert set(record["answers"]) == {"plain", "observe", "vcd"} and set(record["answers"]["plain"]) == {"1", "3"}
    assert record["answers"]["observe"] == record["answers"]["plain"]  # watching never changes the output
    assert record["methods"]["vcd"] == [{"method": "VCD", "alpha": 1.0, "beta": 0.1, "noise_step": 500, "seed": 0}]
    m = record["metrics"]["plain"]["chair"]["CHAIR_s"]
    assert m["low"] <= m["value"] <= m["high"]
    assert record["paired"]["observe"]["chair"]["CHAIR_i"] == {"diff": 0.0, "low": 0.0, "high": 0.0}
    assert "| plain |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").is_file()
    # resumable: a planted answer is kept, not regenerated, and scored
    record["answers"]["plain"]["1"] = "a frisbee, a dog and another frisbee"
    del record["answers"]["vcd"]["3"]
    out.write_text(json.dumps(record))
    again = _cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    resumed = json.loads(out.read_text())
    assert resumed["answers"]["plain"]["1"] == "a frisbee, a dog and another frisbee" and "3" in resumed["answers"]["vcd"]
    assert resumed["details"]["plain"]["1"]["hallucinated"] == ["frisbee", "frisbee"]  # every mention
    once = _cli(*args, "--chair-mentions", "once", cwd=tmp_path)  # rescored, not regenerated
    assert once.returncode == 0, once.stderr
    rescored = json.loads(out.read_text())
    assert rescored["answers"] == resumed["answers"] and rescored["details"]["plain"]["1"]["hallucinated"] == ["frisbee"]
    other = _cli(*[a if a != "6" else "7" for a in args], cwd=tmp_path)  # other settings: refused, file kept
    assert other.returncode == 2 and "other settings" in other.stderr

    pope_out = tmp_path / "pope.json"
    result = _cli("--model", "tiny", "--benchmark", "pope", "--data", data, "--methods", "plain,guard", "--splits",
                  "adversarial", "--n-boot", "20", "--answer-tokens", "3", "--out", pope_out, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(pope_out.read_text())
    assert len(record["answers"]["guard"]) == 12  # 2 images x 6 questions
    assert set(record["metrics"]["guard"]["pope-adversarial"]) >= {"accuracy", "precision", "recall", "F1", "yes_ratio"}
    # another yes/no parser rescores the saved answers (none generated again: a planted one stays)
    key = next(iter(record["answers"]["plain"]))
    record["answers"]["plain"][key] = "Yes, but there is no such thing."
    pope_out.write_text(json.dumps(record))
    rescored = _cli("--model", "tiny", "--benchmark", "pope", "--data", data, "--methods", "plain,guard", "--splits",
                    "adversarial", "--n-boot", "20", "--answer-tokens", "3", "--out", pope_out, "--yes-no", "pope",
                    cwd=tmp_path)  # fmt: skip
    assert rescored.returncode == 0, rescored.stderr
    record = json.loads(pope_out.read_text())
    assert record["answers"]["plain"][key] == "Yes, but there is no such thing." and record["scoring"]["yes_no"] == "pope"
    assert record["details"]["plain"][key]["parsed"] == "no"
    questions = pope.build_questions(coco.load_coco(data / "annotations/instances_val2014.json"), "adversarial")
    answers = [record["answers"]["plain"][f"adversarial/{n}"] for n in range(len(questions))]
    expected = pope.pope(answers, questions, pope.parse_like_release)
    assert {k: v["value"] for k, v in record["metrics"]["plain"]["pope-adversarial"].items()} == pytest.approx(expected)


def test_eval_amber_and_bad_input(tmp_path):
    data = write_amber(tmp_path / "amber")
    out = tmp_path / "amber.json"
    short = _cli("--model", "tiny", "--benchmark", "amber", "--data", data, "--methods", "plain", "--max-new-tokens", "3",
                 "--n-boot", "20", "--limit", "1", "--out", tmp_path / "short.json", cwd=tmp_path)  # fmt: skip
    assert short.returncode == 0, short.stderr
    record = json.loads((tmp_path / "short.json").read_text())
    assert record["sizes"] == {"amber-generative": {"run": 1, "full": 2}, "amber-existence": {"run": 1, "full": 2},
                               "amber-attribute": {"run": 1, "full": 1}, "amber-relation": {"run": 1, "full": 1},
                               "amber-all": {"run": 3, "full": 4}}  # fmt: skip
    assert len(record["answers"]["plain"]) == 4  # "all" shares the families' answers
    seconds = record["seconds"]["plain"]
    assert set(seconds) == {"amber-generative", "amber-existence", "amber-attribute", "amber-relation"}
    hours = sum(s / n * record["sizes"][t]["full"] for t, (s, n) in seconds.items()) / 3600
    assert runner.full_run_hours(record)["plain"] == pytest.approx((4, sum(s for s, _ in seconds.values()), hours))
    assert f"| plain | 4 |" in (tmp_path / "short.md").read_text()

    result = _cli("--model", "tiny", "--benchmark", "amber", "--data", data, "--methods", "plain,pai", "--max-new-tokens",
                  "5", "--n-boot", "20", "--out", out, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert set(record["metrics"]["pai"]) == {"amber-generative", "amber-existence", "amber-attribute", "amber-relation", "amber-all"}
    items = amber.load_amber(data).items
    dis, gen = [i for i in items if not i.generative], [i for i in items if i.generative]
    answers = record["answers"]["pai"]
    expected = amber.discriminative([answers[f"d/{i.id}"] for i in dis], dis)
    assert {k: v["value"] for k, v in record["metrics"]["pai"]["amber-all"].items()} == pytest.approx(expected)
    expected = amber.generative([answers[f"g/{i.id}"] for i in gen], gen, amber.load_amber(data))[0]
    assert {k: v["value"] for k, v in record["metrics"]["pai"]["amber-generative"].items()} == pytest.approx(expected, nan_ok=True)
    bad = _cli("--model", "tiny", "--benchmark", "amber", "--data", data, "--methods", "plain,magic", "--out", out, cwd=tmp_path)
    assert bad.returncode == 2 and "unknown" in bad.stderr
    missing = _cli("--model", "tiny", "--benchmark", "chair", "--data", data, "--out", tmp_path / "x.json", cwd=tmp_path)
    assert missing.returncode == 2 and "instances" in missing.stderr


# -- one pipeline, two entry points ----------------------------------------------------------------
def test_eval_reproduces_the_evidence_benchmark_on_its_own_scenes(tmp_path):
    """The evidence benchmark's held-out scenes exported to COCO / POPE files and run through
    ``adapt-hooks eval``'s pipeline give the benchmark's own CHAIR and POPE figures exactly."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from evidence import metrics as evidence_metrics
    from evidence.evaluate import answer_yes, build_suite, describe, truth

    from adapt_hooks.evaluation import runner
    from adapt_hooks.evaluation.shapes_export import export_coco
    from adapt_hooks.shapes import model as shapes
    from adapt_hooks.shapes import text

    torch.set_num_threads(1)
    suite = build_suite(0, n_per_kind=4, n_control=0)
    scenes = suite.adversarial
    index = {id(s): n for n, s in enumerate(scenes)}
    questions = [(index[id(s)], k, y) for s, k, y in zip(suite.pope_scenes, suite.pope_kinds, suite.pope_labels)]
    data = export_coco(scenes, tmp_path / "shapes", questions=questions)
    model, processor = shapes.load_model(attn_implementation="sdpa"), shapes.load_processor()

    described = describe(model, scenes)
    expected_chair = evidence_metrics.chair([text.mentions(i) for i in described.ids], truth(scenes))
    expected_pope = evidence_metrics.pope(answer_yes(model, suite.pope_scenes, suite.pope_kinds), suite.pope_labels)

    prompts = runner.Prompts(describe=text.DESCRIBE)
    tasks = [runner.chair_task(data, None, prompts, 24, vocabulary="categories", per_mention=False),  # as the benchmark counts
             *runner.pope_tasks(data, None, prompts, 2, 0, ["adversarial"])]  # fmt: skip
    record = runner.Run("shapes", "chair+pope", tasks, ["plain"], tmp_path / "out.json", batch_size=16, n_boot=20).execute(
        model, processor, progress=False)  # fmt: skip
    got = record["metrics"]["plain"]
    assert [record["answers"]["plain"][str(n + 1)] for n in range(len(scenes))] == [text.decode(i) for i in described.ids]
    for name in ("CHAIR_i", "CHAIR_s", "recall"):
        assert got["chair"][name]["value"] == pytest.approx(expected_chair[name], abs=1e-12), name
    for name in ("accuracy", "precision", "recall", "F1", "yes_ratio"):
        assert got["pope-adversarial"][name]["value"] == pytest.approx(expected_pope[name], abs=1e-12), name
