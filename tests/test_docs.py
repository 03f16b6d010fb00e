"""Every code block of README.md and docs/*.md is checked, so the documentation cannot rot.

The rules (a new page is picked up automatically):

* Every fence has an info string. ``python`` and ``bash`` blocks are code; ``text`` blocks
  (diagrams, formulas, sample output) are not. ``python no-run`` / ``bash no-run`` marks a block
  that is deliberately not checked; at most ``MAX_NO_RUN`` of those in all the docs.
* ``python`` blocks of one page run in order in one namespace, so later blocks build on earlier
  ones, with a fresh temporary directory as working directory that holds ``photo.jpg`` (a
  generated scene). The namespace starts with tiny stand-ins for what a reader brings: ``model``
  (the tiny random-weight LLaVA, sdpa attention), ``processor`` (its ``LlavaProcessor``), ``image``
  (a PIL image) and ``inputs`` (``processor`` output for ``image`` and a question). While a page
  runs, ``from_pretrained`` of transformers' model classes, Auto model classes and processors
  returns the tiny model (processor) of the checkpoint's family (``CHECKPOINTS``; loading options
  such as ``dtype`` or ``device_map`` are ignored), so a block can show the code for a real
  checkpoint. A checkpoint the table does not know fails the test; the shapes model shipped in
  the package (``adapt_hooks.shapes``) loads for real.
* ``bash`` blocks: each command (``&&`` separates commands; ``#`` comments and ``VAR=value``
  prefixes are dropped) must be one of
  - ``adapt-hooks demo ...``, or any ``adapt-hooks`` command with ``--help`` or ``--version``: run
    as ``python -m adapt_hooks ...`` in a subprocess, in a temporary directory; it must exit 0;
  - any other ``adapt-hooks`` command (it needs a download or a GPU): parsed by the command's own
    argument parser, so every flag must exist and every value must parse;
  - ``pip install`` of the project (``.`` or ``adapt-hooks``, with extras that pyproject.toml
    declares) or of a package pyproject.toml depends on;
  - ``pytest ...``: not run (it is this suite or the benchmarks);
  - ``python benchmarks/NAME.py ...``: the script must exist and answer ``--help`` (scripts that
    need a GPU or minutes of CPU are not run here; their own tests smoke-test them).
  Anything else fails; a block that cannot follow these rules is marked ``bash no-run``.
* docs/api.md gives every public name a heading, and each callable its signature on a line of its
  own (`` `adapt_hooks.NAME(parameters) -> result` ``). Each signature line must match
  ``inspect.signature`` (names, kinds, defaults); a ``| parameter |`` table after it must list
  exactly those parameters; names in an ``| attribute |`` table must exist. The ``| flag |``
  tables of the command line must match its argument parser, defaults included.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import adapt_hooks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
KINDS = ("python", "bash", "text", "python no-run", "bash no-run")
MAX_NO_RUN = 2
MAX_PICTURE_BYTES = 100_000

#: Checkpoints the docs may load, and the tiny family that stands in for each.
CHECKPOINTS = {
    "llava-hf/llava-1.5-7b-hf": "llava",
    "llava-hf/llava-1.5-13b-hf": "llava",
    "llava-hf/llava-v1.6-mistral-7b-hf": "llava_next",
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": "llava_onevision",
    "Qwen/Qwen2-VL-7B-Instruct": "qwen2_vl",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "Qwen/Qwen3-VL-8B-Instruct": "qwen3_vl",
    "zai-org/GLM-4.1V-9B-Thinking": "glm4v",
    "HuggingFaceM4/Idefics3-8B-Llama3": "idefics3",
    "HuggingFaceTB/SmolVLM2-256M-Video-Instruct": "smolvlm",
    "google/gemma-3-4b-it": "gemma3",
    "google/paligemma2-3b-mix-224": "paligemma",
    "OpenGVLab/InternVL3-1B-hf": "internvl",
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503": "mistral3",
    "CohereForAI/aya-vision-8b": "aya_vision",
    "meta-llama/Llama-3.2-11B-Vision-Instruct": "mllama",
}
#: Families with a tiny processor (the others have tiny models only).
TINY_PROCESSORS = ("llava",)


# -- reading the pages ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # line of the opening fence (1-based)
    kind: str
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")


@functools.cache
def blocks(path: Path) -> tuple[Block, ...]:
    """The fenced blocks of a Markdown file, with their info string and dedented code."""
    lines, found, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        found.append(Block(path, start, " ".join(info.split()), "\n".join(body) + "\n"))
        i += 1
    return tuple(found)


def _pages_with(kind: str) -> list[Path]:
    return [page for page in PAGES if any(b.kind == kind for b in blocks(page))]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_code_block_is_labelled_and_few_are_not_run():
    every = [b for page in PAGES for b in blocks(page)]
    unlabelled = [f"{b} ({b.kind or 'no info string'})" for b in every if b.kind not in KINDS]
    assert not unlabelled, f"fences need one of {KINDS}: {unlabelled}"
    not_run = [str(b) for b in every if b.kind.endswith("no-run")]
    assert len(not_run) <= MAX_NO_RUN, f"too many blocks marked no-run (make them runnable): {not_run}"


def test_readme_has_a_runnable_quick_start():
    blocks_ = [b for b in blocks(ROOT / "README.md") if b.kind == "python" and "tiny_model" in b.code]
    assert blocks_, "README lost its runnable quick start"  # test_python_blocks_run executes it
    readme = (ROOT / "README.md").read_text()
    shown = readme[readme.index(blocks_[0].code) + len(blocks_[0].code):]
    shown = shown[shown.index("```text\n") + 8 :].split("```")[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), torch.no_grad():
        exec(compile(blocks_[0].code, "README.md", "exec"), {"__name__": "readme"})
    assert printed.getvalue().strip() == shown.strip(), "the quick start's shown output is not what it prints"


# -- python blocks --------------------------------------------------------------------------------
def _stand_ins(folder: Path) -> dict:
    """The names a page's python blocks start with, and ``photo.jpg`` in ``folder``."""
    from adapt_hooks.prompts import chat_prompt
    from adapt_hooks.tiny import tiny_model
    from adapt_hooks.tiny.llava import demo_image
    from adapt_hooks.tiny.llava import processor as tiny_processor

    demo_image(0).resize((320, 240)).save(folder / "photo.jpg")
    processor = tiny_processor()
    image = demo_image(1)
    inputs = processor(images=image, text=chat_prompt(processor, "what is in the image"), return_tensors="pt")
    return {"model": tiny_model("llava", "sdpa"), "processor": processor, "image": image, "inputs": inputs}


def _family(checkpoint) -> str:
    family = CHECKPOINTS.get(str(checkpoint))
    if family is None:
        raise AssertionError(f"the docs load {checkpoint!r}; add it to CHECKPOINTS in tests/test_docs.py")
    return family


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose much on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def checkpoints_are_tiny(monkeypatch):
    """``from_pretrained`` of models and processors returns the tiny stand-in of the family."""
    from transformers import AutoProcessor, PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass
    from transformers.processing_utils import ProcessorMixin

    from adapt_hooks.shapes.model import WEIGHTS_DIR
    from adapt_hooks.tiny import tiny_model
    from adapt_hooks.tiny.llava import processor as tiny_processor

    owners = (PreTrainedModel, _BaseAutoModelClass, AutoProcessor, ProcessorMixin)
    originals = {owner: owner.__dict__["from_pretrained"].__func__ for owner in owners}

    def shipped(cls, checkpoint, *args, **options):
        """The package's own shapes model loads for real: it is on disk, no download."""
        owner = next(o for o in cls.__mro__ if o in originals)
        return originals[owner](cls, checkpoint, *args, **options)

    def is_shipped(checkpoint) -> bool:
        return Path(str(checkpoint)).resolve() == WEIGHTS_DIR

    def load_model(cls, checkpoint, *args, attn_implementation=None, **options):
        if is_shipped(checkpoint):
            return shipped(cls, checkpoint, *args, **({"attn_implementation": attn_implementation} if attn_implementation else {}), **options)
        model = tiny_model(_family(checkpoint), attn_implementation or "sdpa")
        if issubclass(cls, PreTrainedModel) and not isinstance(model, cls):
            raise AssertionError(f"{cls.__name__}.from_pretrained({checkpoint!r}): its tiny model is a {type(model).__name__}")
        return model

    def load_processor(cls, checkpoint, *args, **options):
        if is_shipped(checkpoint):
            return shipped(cls, checkpoint, *args, **options)
        family = _family(checkpoint)
        if family not in TINY_PROCESSORS:
            raise AssertionError(f"no tiny processor for {family!r} ({checkpoint!r}); use a LLaVA checkpoint in the docs")
        return tiny_processor()

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(load_model))
    monkeypatch.setattr(_BaseAutoModelClass, "from_pretrained", classmethod(load_model))
    monkeypatch.setattr(AutoProcessor, "from_pretrained", classmethod(load_processor))
    monkeypatch.setattr(ProcessorMixin, "from_pretrained", classmethod(load_processor))


@contextlib.contextmanager
def _registries_restored():
    """Adapters or tiny families a page registers are forgotten after it."""
    from adapt_hooks.adapters import _REGISTRY
    from adapt_hooks.tiny import _FAMILIES

    saved = [(registry, dict(registry)) for registry in (_REGISTRY, _FAMILIES)]
    try:
        yield
    finally:
        for registry, content in saved:
            registry.clear()
            registry.update(content)


@pytest.mark.parametrize("page", _pages_with("python"), ids=_page_id)
def test_python_blocks_run(page, tmp_path, monkeypatch, checkpoints_are_tiny, one_thread):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": f"docs_{page.stem}", **_stand_ins(tmp_path)}
    monkeypatch.chdir(tmp_path)
    with _registries_restored():
        for block in blocks(page):
            if block.kind == "python":
                # pad so that tracebacks show the line numbers of the Markdown file
                exec(compile("\n" * block.line + block.code, str(block.path), "exec"), namespace)


def test_adapters_guide_example_registers_a_working_adapter(one_thread):
    import torch

    from adapt_hooks.adapters import _REGISTRY
    from adapt_hooks.tiny import tiny_inputs, tiny_model

    (block,) = [b for b in blocks(DOCS / "adapters.md") if b.kind == "python"]
    namespace = {"__name__": "adapters_guide"}
    with _registries_restored():
        exec(compile(block.code, "adapters.md", "exec"), namespace)
        assert "my_vlm" in adapt_hooks.supported_models()
        # the guide's adapter describes a LLaVA-shaped model: let it serve the tiny LLaVA
        mine = type("MyLlava", (namespace["MyVLMAdapter"],), {"model_types": ("llava",)})()
        adapt_hooks.register_adapter(mine, overwrite=True)
        model = tiny_model("llava", "sdpa")
        inputs = tiny_inputs(model, 2)
        plain = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        with adapt_hooks.guard(model, monitor=adapt_hooks.DriftMonitor(steer=False)) as run:
            watched = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        assert run.adapter is mine
        assert torch.equal(watched, plain) and run.anchor.grid(1).shape == (8, 8)
    assert _REGISTRY["llava"] is not mine and "my_vlm" not in _REGISTRY


# -- bash blocks ----------------------------------------------------------------------------------
def _commands(block: Block) -> list[list[str]]:
    """The commands of a bash block, as argument lists."""
    found = []
    for line in block.code.replace("\\\n", " ").splitlines():
        command: list[str] = []
        for token in [*shlex.split(line, comments=True), "&&"]:
            if token in ("&&", ";"):
                if command:
                    found.append(command)
                command = []
            elif command or not re.fullmatch(r"[A-Za-z_]\w*=.*", token):  # drop VAR=value prefixes
                command.append(token)
    return found


@functools.cache
def _run_cli(args: tuple[str, ...]) -> subprocess.CompletedProcess:
    """``python -m adapt_hooks *args`` in a fresh temporary directory (once per distinct command)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        return subprocess.run([sys.executable, "-m", "adapt_hooks", *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=300)


def _check_cli(args: list[str], where: Block) -> None:
    from adapt_hooks.cli import parser

    if args[:1] == ["demo"] or {"-h", "--help", "--version"} & set(args):
        result = _run_cli(tuple(args))
        assert result.returncode == 0, f"{where}: adapt-hooks {' '.join(args)} failed:\n{result.stderr[-2000:]}"
        return
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: adapt-hooks {' '.join(args)} does not parse: {errors.getvalue().strip()}")


def _check_pip(args: list[str], where: Block) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    requirements = project["dependencies"] + [r for group in extras.values() for r in group]
    packages = {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}
    for target in (a for a in args if not a.startswith("-")):
        own = re.fullmatch(r"(?:\.|adapt-hooks)(?:\[(.*)\])?", target)
        if own:
            unknown = {e.strip() for e in (own[1] or "").split(",") if e.strip()} - set(extras)
            assert not unknown, f"{where}: pip install {target}: no extra {sorted(unknown)} in pyproject.toml"
        else:
            name = re.split(r"[<>=!~\[;]", target, maxsplit=1)[0].lower()
            assert name in packages, f"{where}: pip install {target}: not a dependency in pyproject.toml"


def _check_script(path: str, where: Block) -> None:
    script = ROOT / path
    assert script.is_file(), f"{where}: {path} does not exist"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert done.returncode == 0, f"{where}: {path} --help failed: {done.stderr[-500:]}"


def _check_example(command: list[str], where: Block) -> None:
    """``[accelerate launch [options]] [python] examples/X.py [flags]``: the example's own parser
    takes the flags, and a ``--config_file`` exists and is a configuration accelerate reads."""
    script = next(i for i, token in enumerate(command) if token.endswith(".py"))
    path = ROOT / command[script]
    assert path.is_file(), f"{where}: {command[script]} does not exist"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.parser().parse_args(command[script + 1 :])
    launch = command[:script]
    if "--config_file" in launch:
        from accelerate.commands.config.config_args import ClusterConfig

        ClusterConfig.from_yaml_file(str(ROOT / launch[launch.index("--config_file") + 1]))


@pytest.mark.parametrize("page", _pages_with("bash"), ids=_page_id)
def test_bash_blocks_run_or_parse(page):
    for block in blocks(page):
        if block.kind != "bash":
            continue
        for command in _commands(block):
            if command[0] == "adapt-hooks":
                _check_cli(command[1:], block)
            elif command[:3] == ["python", "-m", "adapt_hooks"]:
                _check_cli(command[3:], block)
            elif command[:2] == ["pip", "install"]:
                _check_pip(command[2:], block)
            elif command[0] == "pytest":
                continue  # the test suite itself
            elif command[:2] == ["accelerate", "launch"] or (command[0] == "python" and command[1].startswith("examples/")):
                _check_example(command, block)
            elif command[0] == "python" and len(command) > 1 and re.fullmatch(r"benchmarks/\w+\.py", command[1]):
                _check_script(command[1], block)
            else:
                pytest.fail(f"{block}: {shlex.join(command)!r} is none of the commands tests/test_docs.py can check; "
                            "mark the block `bash no-run` if it must stay")


# -- the API reference ----------------------------------------------------------------------------
_SIGNATURE = re.compile(r"`(adapt_hooks(?:\.\w+)+)\((.*)\)(?: -> .+)?`")
_CELL_NAMES = re.compile(r"`(\*{0,2}[A-Za-z_][\w-]*)`")


@dataclass
class Entry:
    """One signature line of api.md and the tables that follow it."""

    name: str
    parameters: str
    line: int
    table: list[str] | None = None  # names of a "| parameter |" table
    attributes: list[str] | None = None  # names of an "| attribute |" table


def _api_entries() -> list[Entry]:
    entries: list[Entry] = []
    current, table = None, None
    for number, line in enumerate(API.read_text().splitlines(), 1):
        stripped = line.strip()
        signature = _SIGNATURE.fullmatch(stripped)
        if signature:
            current, table = Entry(signature[1], signature[2], number), None
            entries.append(current)
        elif stripped.startswith("#"):
            current, table = None, None
        elif current is not None and stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if table is None:  # header row
                table = cells[0]
                if table == "parameter":
                    current.table = current.table or []
                elif table == "attribute":
                    current.attributes = current.attributes or []
            elif not set(cells[0]) <= set("-: "):
                names = _CELL_NAMES.findall(cells[0])
                if table == "parameter":
                    current.table.extend(names)
                elif table == "attribute":
                    current.attributes.extend(names)
        elif not stripped.startswith("|"):
            table = None
    return entries


def _resolve(qualified: str):
    """The object a dotted name of api.md means: attributes first, then submodules."""
    parts = qualified.split(".")
    obj, path = adapt_hooks, "adapt_hooks"
    for part in parts[1:]:
        path = f"{path}.{part}"
        obj = getattr(obj, part) if hasattr(obj, part) else importlib.import_module(path)
    return obj


def _owner(entry: Entry):
    """The class whose attributes an entry's attribute table lists."""
    obj = _resolve(entry.name)
    return obj if inspect.isclass(obj) else _resolve(entry.name.rsplit(".", 1)[0])


def _documented(parameters: str) -> list[tuple[str, str, object]]:
    """(name, kind, default) of a documented parameter list; defaults must be literals."""
    args = ast.parse(f"def f({parameters}): pass").body[0].args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + args.defaults
    out = [(a.arg, "positional", d) for a, d in zip(positional, defaults)]
    if args.vararg:
        out.append((f"*{args.vararg.arg}", "var", None))
    out += [(a.arg, "keyword", d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append((f"**{args.kwarg.arg}", "var", None))
    return [(name, kind, inspect.Parameter.empty if d is None else ast.literal_eval(d)) for name, kind, d in out]


def _actual(obj) -> list[tuple[str, str, object]]:
    parameters = list(inspect.signature(obj).parameters.values())
    if parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.KEYWORD_ONLY: "keyword", inspect.Parameter.VAR_POSITIONAL: "var",
             inspect.Parameter.VAR_KEYWORD: "var"}
    prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    return [(prefix.get(p.kind, "") + p.name, kinds[p.kind], p.default) for p in parameters]


#: Callables whose API entry must have a parameter table.
MAIN_CALLABLES = (
    "guard", "Anchor", "Anchor.from_weights", "Anchor.from_layer_maps", "Anchor.grid", "Anchor.to_image",
    "DriftMonitor", "DebiasMask", "estimate_debias_mask", "VAGDPOLoss", "VAGDPOLoss.forward", "dpo_loss",
    "sequence_logps", "reference_logps", "compute_anchor", "make_vagdpo_pair", "VAGDPOCollator",
    "register_adapter", "Adapter.row_grids", "tiny.tiny_model", "tiny.tiny_inputs",
)
TINY_NAMES = ("tiny.tiny_model", "tiny.tiny_inputs", "tiny.model_types")


def test_api_reference_covers_every_public_name():
    headings = set(re.findall(r"^#{2,4} `([\w.]+)`", API.read_text(), flags=re.M))
    wanted = [f"adapt_hooks.{name}" for name in (*adapt_hooks.__all__, *TINY_NAMES)]
    missing = [name for name in wanted if name not in headings]
    assert not missing, f"docs/api.md has no section for {missing}"
    signed = {entry.name for entry in _api_entries()}
    unsigned = [name for name in wanted if callable(_resolve(name)) and name not in signed]
    assert not unsigned, f"docs/api.md gives no signature line for {unsigned}"


def test_api_signatures_and_parameter_tables_match_the_code():
    entries = _api_entries()
    assert len(entries) > 40
    problems = []
    for entry in entries:
        where = f"docs/api.md:{entry.line} {entry.name}"
        documented, actual = _documented(entry.parameters), _actual(_resolve(entry.name))
        if documented != actual:
            problems.append(f"{where}: documented ({entry.parameters}) but the code has {actual}")
        if entry.table is not None and entry.table != [name for name, _, _ in actual]:
            problems.append(f"{where}: parameter table {entry.table} != {[name for name, _, _ in actual]}")
        for name in entry.attributes or ():
            owner = _owner(entry)
            if not hasattr(owner, name) and not re.search(rf"self\.{name}\b", inspect.getsource(owner)):
                problems.append(f"{where}: {owner.__name__} has no attribute {name!r}")
    untabled = [name for name in MAIN_CALLABLES
                if not any(e.name == f"adapt_hooks.{name}" and e.table for e in entries)]
    if untabled:
        problems.append(f"no parameter table for {untabled}")
    assert not problems, "\n".join(problems)


def test_api_reference_lists_every_flag_of_the_command_line():
    from adapt_hooks.cli import parser

    text = API.read_text()
    (commands,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        section = re.search(rf"^### `adapt-hooks {name}`\n(.*?)(?=^#|\Z)", text, flags=re.M | re.S)
        assert section, f"docs/api.md has no section for adapt-hooks {name}"
        rows = re.findall(r"^\| `(--[\w-]+)` \| ([^|]*?) \|", section[1], flags=re.M)
        documented = dict(rows)
        actual = {}
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = max(action.option_strings, key=len)
            if action.required:
                actual[flag] = "required"
            elif isinstance(action, argparse._StoreTrueAction):
                actual[flag] = "off"
            else:
                actual[flag] = str(action.default)
        assert documented == actual, f"adapt-hooks {name}: docs/api.md lists {documented}, the parser has {actual}"


# -- the pages as a whole -------------------------------------------------------------------------
def test_index_links_every_page_and_pictures_are_small():
    index = (DOCS / "index.md").read_text()
    unlinked = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and f"]({p.name}" not in index]
    assert not unlinked, f"docs/index.md does not link {unlinked}"
    for page in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            picture = page.parent / target
            assert picture.is_file(), f"{_page_id(page)}: missing picture {target}"
            assert picture.stat().st_size < MAX_PICTURE_BYTES, f"{target} is {picture.stat().st_size} bytes"


# -- the verdict near the top of README and docs/index.md ---------------------------------------
def _evidence_partner_rates() -> dict[str, float]:
    """The "partner named" column of docs/evidence.md's side-by-side table, per setting."""
    section = (DOCS / "evidence.md").read_text().split("## Side by side")[1]
    first = section[section.index("\n|") + 1 :].split("\n\n")[0]  # the section's first table
    rows = [line for line in first.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    column = header.index("partner named ↓")
    rates = {}
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rates[cells[0]] = float(cells[column].split("±")[0])
    return rates


@pytest.mark.parametrize("page", [ROOT / "README.md", DOCS / "index.md"], ids=_page_id)
def test_the_verdict_near_the_top_quotes_the_evidence_tables(page):
    rates = _evidence_partner_rates()
    text = page.read_text()
    verdict = text[text.index("**Does it help?**"):].split("\n\n")[0]
    assert text.index("**Does it help?**") < len(text) // 4, "the verdict belongs near the top"
    quoted = {
        "guard (paper defaults)": r"partner named in ([\d.]+) of descriptions with its defaults",
        "plain model": r"against ([\d.]+) for the plain model",
        "ordinary DPO (original image both sides)": r"ordinary DPO \(([\d.]+)\)",
        "VAG-DPO": r"VAG-DPO \(([\d.]+)\)",
        "VCD (α 1, β 0.1)": r"VCD\s+\(([\d.]+) at α 1",
        "VCD (α 3, β 0.1)": r"([\d.]+) at α 3",
        "PAI + CFG (α 0.2, γ 1.1)": r"PAI's CFG step \(([\d.]+)\)",
    }
    for setting, pattern in quoted.items():
        found = re.search(pattern, verdict)
        assert found, f"{page.name}: the verdict does not quote {setting!r}"
        assert float(found[1]) == rates[setting], f"{page.name}: {setting} is {rates[setting]} in docs/evidence.md"
    guard_helps = rates["guard (paper defaults)"] < rates["plain model"]
    assert ("does **not** reduce" in verdict) == (not guard_helps), "the verdict's direction disagrees with the evidence"
