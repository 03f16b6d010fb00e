"""COCO objects: the 80 categories with synonym lists, a caption parser, and the annotation files.

CHAIR (Rohrbach et al., 2018) decides which COCO objects a caption names by matching its words
against a synonym list per category, longest phrase first, so that two-word compounds ("hot
dog", "teddy bear", "stop sign", "dining table") are one object and not a dog, a bear or a sign.
The lists below were written for this package from the category names and common usage; they
follow the paper's approach but are not a copy of its script's lists, so figures can differ from
it by a small amount. Plurals are generated (:func:`plural`) plus irregular forms listed here.

Files read (the layout of the COCO 2014/2017 releases):

* ``instances_*.json``: ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id",
  "category_id", ...}], "categories": [{"id", "name", ...}]}``;
* ``captions_*.json``: ``{"images": [...], "annotations": [{"image_id", "caption"}]}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The 80 COCO categories (their official names) and the words and phrases that name each.
#: The category name itself is always a synonym.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "kid",
               "baby", "guy", "lady", "player", "skier", "surfer", "skateboarder", "snowboarder", "rider",
               "adult", "teenager", "toddler", "gentleman", "pedestrian", "worker", "chef", "batter", "catcher",
               "pitcher", "umpire", "tourist", "student", "officer", "policeman", "soldier",
               "crowd", "passenger", "spectator", "biker", "cyclist", "human"),
    "bicycle": ("bicycle", "bike", "mountain bike"),
    "car": ("car", "automobile", "sedan", "taxi", "cab", "suv", "van", "jeep", "minivan", "police car"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "scooter", "moped", "dirt bike", "motor cycle"),
    "airplane": ("airplane", "aeroplane", "plane", "jet", "airliner", "aircraft", "jetliner", "jumbo jet"),
    "bus": ("bus", "school bus", "double decker", "trolley bus", "minibus"),
    "train": ("train", "locomotive", "tram", "subway", "railcar", "freight train", "passenger train"),
    "truck": ("truck", "pickup", "pickup truck", "lorry", "fire truck", "dump truck"),
    "boat": ("boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "raft", "rowboat", "vessel",
             "speedboat"),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight", "street light"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench", "park bench"),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "parrot", "eagle", "owl", "sparrow", "crow",
             "swan", "hen", "chicken", "rooster", "pelican", "penguin", "flamingo"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup", "doggy", "poodle", "terrier", "retriever", "labrador", "bulldog", "husky"),
    "horse": ("horse", "pony", "foal", "stallion", "mare", "colt"),
    "sheep": ("sheep", "lamb", "ewe"),
    "cow": ("cow", "cattle", "bull", "calf", "ox", "oxen"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly", "polar bear", "cub"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "knapsack", "rucksack", "back pack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse", "hand bag"),
    "tie": ("tie", "necktie", "bow tie"),
    "suitcase": ("suitcase", "luggage", "suit case", "briefcase"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("ski", "skis"),
    "snowboard": ("snowboard", "snow board"),
    "sports ball": ("sports ball", "ball", "football", "soccer ball", "baseball", "basketball", "tennis ball",
                    "volleyball", "softball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt", "baseball mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board", "paddleboard", "longboard"),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle", "water bottle", "wine bottle", "beer bottle"),
    "wine glass": ("wine glass",),
    "cup": ("cup", "mug", "coffee cup", "teacup", "tea cup"),
    "fork": ("fork",),
    "knife": ("knife", "knives"),
    "spoon": ("spoon", "ladle"),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "panini"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake"),
    "chair": ("chair", "stool", "armchair"),
    "couch": ("couch", "sofa", "loveseat", "futon"),
    "potted plant": ("potted plant", "house plant", "houseplant", "plant", "flower pot", "flowerpot"),
    "bed": ("bed", "bunk bed", "crib"),
    "dining table": ("dining table", "table", "desk", "coffee table", "kitchen table"),
    "toilet": ("toilet", "urinal", "toilet seat", "commode"),
    "tv": ("tv", "television", "tv screen", "monitor", "flat screen"),
    "laptop": ("laptop", "notebook computer"),
    "mouse": ("mouse", "computer mouse", "mice"),
    "remote": ("remote", "remote control", "controller"),
    "keyboard": ("keyboard", "computer keyboard"),
    "cell phone": ("cell phone", "cellphone", "phone", "mobile phone", "smartphone", "smart phone", "telephone"),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink", "basin"),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    "book": ("book", "novel", "textbook"),
    "clock": ("clock", "alarm clock", "clock tower"),
    "vase": ("vase",),
    "scissors": ("scissors", "shears"),
    "teddy bear": ("teddy bear", "teddy", "stuffed bear", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}

#: Irregular plurals (a plural form here replaces the generated one).
IRREGULAR_PLURALS: dict[str, str] = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "knife": "knives", "mouse": "mice",
    "sheep": "sheep", "ox": "oxen", "goose": "geese", "skis": "skis", "scissors": "scissors", "shears": "shears",
    "cattle": "cattle", "people": "people", "men": "men", "women": "women", "children": "children", "mice": "mice",
    "knives": "knives", "oxen": "oxen", "broccoli": "broccoli", "luggage": "luggage", "calf": "calves",
    "gentleman": "gentlemen", "policeman": "policemen", "shelf": "shelves", "wolf": "wolves",
}

_WORD = re.compile(r"[a-z0-9]+")


def plural(word: str) -> str:
    """The English plural of a (last) word: irregular forms first, then -s / -es / -ies rules."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words of a text (punctuation and hyphens split words)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Mention:
    """One object named in a text: its category, the words that named it and where (word index)."""

    category: str
    phrase: str
    position: int


@dataclass
class Vocabulary:
    """Phrases that name each category; :meth:`mentions` finds them in a text, longest phrase first."""

    synonyms: Mapping[str, Sequence[str]]
    phrases: dict[tuple[str, ...], str] = field(init=False)
    longest: int = field(init=False)

    def __post_init__(self) -> None:
        self.phrases = {}
        for category, names in self.synonyms.items():
            for name in (category, *names):
                tokens = tuple(words(name))
                if not tokens:
                    continue
                for form in (tokens, (*tokens[:-1], plural(tokens[-1]))):
                    existing = self.phrases.setdefault(form, category)
                    if existing != category and form == tokens:  # a base form wins over another's plural
                        self.phrases[form] = category
        self.longest = max((len(p) for p in self.phrases), default=1)

    @property
    def categories(self) -> list[str]:
        return list(self.synonyms)

    def mentions(self, text: str) -> list[Mention]:
        """Every object the text names, in order: at each word the longest matching phrase is
        taken and its words are consumed (so "hot dog" is never also a "dog")."""
        tokens, found, i = words(text), [], 0
        while i < len(tokens):
            for n in range(min(self.longest, len(tokens) - i), 0, -1):
                category = self.phrases.get(tuple(tokens[i : i + n]))
                if category is not None:
                    found.append(Mention(category, " ".join(tokens[i : i + n]), i))
                    i += n
                    break
            else:
                i += 1
        return found

    def objects(self, text: str) -> set[str]:
        """The categories a text names, each once."""
        return {m.category for m in self.mentions(text)}


#: Qualified phrases that name their last word's object, not a person (CHAIR's own special cases:
#: "baby elephant" is an elephant, "passenger jet" an airplane), and compounds that name one object.
QUALIFIED: dict[str, str] = {
    **{f"{age} {animal}": category for age in ("baby", "adult")
       for animal, category in (("bird", "bird"), ("cat", "cat"), ("dog", "dog"), ("horse", "horse"), ("sheep", "sheep"),
                                ("cow", "cow"), ("elephant", "elephant"), ("bear", "bear"), ("zebra", "zebra"),
                                ("giraffe", "giraffe"), ("cub", "bear"))},
    "passenger jet": "airplane", "passenger plane": "airplane", "passenger train": "train", "air plane": "airplane",
    "stove top oven": "oven", "laptop computer": "laptop",
}  # fmt: skip


def coco_vocabulary() -> Vocabulary:
    """The 80 COCO categories with :data:`SYNONYMS` and :data:`QUALIFIED`."""
    synonyms = {category: list(names) for category, names in SYNONYMS.items()}
    for phrase, category in QUALIFIED.items():
        if phrase not in synonyms[category]:
            synonyms[category].append(phrase)
    return Vocabulary(synonyms)


def categories_vocabulary(names: Iterable[str]) -> Vocabulary:
    """A vocabulary whose only phrase per category is its own name (any dataset in COCO format)."""
    return Vocabulary({name: (name,) for name in names})


# -- annotation files ---------------------------------------------------------------------------
@dataclass
class CocoSet:
    """What a COCO-format instances (and optionally captions) file says about its images."""

    files: dict[int, str]                      # image id -> file_name
    categories: dict[int, str]                 # category id -> name
    objects: dict[int, set[str]]               # image id -> category names of its instances
    captions: dict[int, list[str]] = field(default_factory=dict)  # image id -> reference captions

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.files)

    def truth(self, vocabulary: Vocabulary | None = None) -> dict[int, set[str]]:
        """Per image, the ground-truth objects of CHAIR: instance categories plus the objects
        that the reference captions name (parsed with ``vocabulary``), as in Rohrbach et al."""
        vocabulary = vocabulary or coco_vocabulary()
        out = {}
        for image in self.image_ids:
            found = set(self.objects.get(image, ()))
            for caption in self.captions.get(image, ()):
                found |= vocabulary.objects(caption)
            out[image] = found
        return out


def _read_json(path: str | Path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_coco(instances: str | Path, captions: str | Path | None = None) -> CocoSet:
    """Read a COCO-format instances file and, when given, a captions file."""
    data = _read_json(instances)
    categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    files = {int(i["id"]): str(i["file_name"]) for i in data["images"]}
    objects: dict[int, set[str]] = {i: set() for i in files}
    for a in data.get("annotations", []):
        objects.setdefault(int(a["image_id"]), set()).add(categories[int(a["category_id"])])
    out = CocoSet(files, categories, objects)
    if captions is not None:
        for a in _read_json(captions).get("annotations", []):
            out.captions.setdefault(int(a["image_id"]), []).append(str(a["caption"]))
    return out
