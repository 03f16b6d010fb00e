"""What a guard and a stress test share to sit inside a model: the ``with``-block plumbing, and an
attention function registered with transformers' dispatch that the text model is pointed at."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from torch import nn

from .. import compat

_names = itertools.count()


class Installed:
    """``__enter__`` runs ``_install`` (and ``_restore`` when it fails halfway), ``__exit__`` runs
    ``_restore``; ``_restore`` must be safe at any point of ``_install`` and twice."""

    _what = "context"
    _installed = False

    def __enter__(self):
        if self._installed:
            raise RuntimeError(f"This {self._what} is already active; leave its `with` block before entering it again.")
        self._installed = True
        try:
            self._install()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._restore()
        finally:
            self._installed = False

    def _install(self) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError


class AttentionSwap:
    """``function`` registered under a fresh name (``prefix_N``) with ``mask_builder``, and
    ``model``'s text attention pointed at it; :meth:`remove` points it back and unregisters."""

    def __init__(self, model: nn.Module, prefix: str, function: Callable, mask_builder: Callable | None) -> None:
        self.model = model
        self.saved = compat.text_attention(model)
        self.name: str | None = f"{prefix}_{next(_names)}"
        compat.register(self.name, function, mask_builder)
        compat.set_text_attention(model, self.name)

    def remove(self) -> None:
        if self.name is None:
            return
        if compat.text_attention(self.model) == self.name:
            compat.set_text_attention(self.model, self.saved)
        compat.unregister(self.name)
        self.name = None
