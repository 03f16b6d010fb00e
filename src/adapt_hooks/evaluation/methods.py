"""The decoding methods an evaluation compares, built from the Python API's own objects.

Each name maps to the list of :class:`adapt_hooks.Method` objects that ``adapt_hooks.guard(model,
methods=...)`` runs (fresh objects for every batch, with the classes' defaults: the papers'
settings), or to ``None`` for the plain model, generated without any guard.
"""

from __future__ import annotations

from collections.abc import Callable

from ..methods.adapt import ADAPT
from ..methods.pai import PAI
from ..methods.vcd import VCD

#: name -> factory of the guard's methods (``None``: no guard at all).
METHODS: dict[str, Callable[[], list] | None] = {
    "plain": None,
    "observe": lambda: [],                              # the guard only watches: same output as plain
    "guard": lambda: [ADAPT()],                         # guard(model): ADAPT with the paper's defaults
    "pai": lambda: [PAI()],
    "pai-cfg": lambda: [PAI(cfg_gamma=1.1)],
    "vcd": lambda: [VCD()],
    "guard+vcd": lambda: [ADAPT(), VCD()],
}


def parse_methods(spec: str) -> list[str]:
    """``"plain,guard,pai,vcd"`` -> the names, checked against :data:`METHODS`."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or spec!r}; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods lists a method twice: {spec!r}")
    return names


def settings(name: str) -> list[dict]:
    """What a method runs, for the output file: each Method's class and settings."""
    factory = METHODS[name]
    if factory is None:
        return []
    return [{"method": type(m).__name__, **{k: v for k, v in m.settings().items()}} for m in factory()]


def context(name: str, model):
    """The context manager to generate under: ``adapt_hooks.guard(model, methods=...)`` or a no-op."""
    from contextlib import nullcontext

    from ..hooks.guard import guard

    factory = METHODS[name]
    return nullcontext() if factory is None else guard(model, methods=factory())
