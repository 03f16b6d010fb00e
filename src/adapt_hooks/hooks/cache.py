"""Following a KV cache through beam search: the cache's ``reorder_cache`` is wrapped so that every
guard following the cache reorders its per-row state the same way."""

from __future__ import annotations

import weakref

import torch

from .. import compat


class BeamFollower:
    """Set on a cache instance as its ``reorder_cache`` while guards follow it: runs the cache's
    own reordering, then lets each following guard reorder its per-row state the same way.
    Holds the cache and the guards by weak reference, so that it keeps neither alive."""

    def __init__(self, cache) -> None:
        self.cache = weakref.ref(cache)
        self.guards: list[weakref.ref] = []

    def __call__(self, beam_idx: torch.Tensor, *args, **kwargs):
        cache = self.cache()
        guards = [guard for guard in (ref() for ref in self.guards) if guard is not None]
        index = beam_idx
        for guard in guards:  # a guard with contrast rows reorders them with the user's rows
            index = guard.cache_index(index)
        result = getattr(type(cache), compat.REORDER)(cache, index, *args, **kwargs)
        for guard in guards:
            guard.reorder_rows(beam_idx)
        return result

    def __deepcopy__(self, memo: dict) -> BeamFollower:
        """A copied cache reorders only itself (``copy.deepcopy`` registers the copy in ``memo``
        before copying its attributes)."""
        copy = memo.get(id(self.cache()))
        return BeamFollower(copy) if copy is not None else self


def follow(cache, guard) -> bool:
    """Have ``cache.reorder_cache`` also reorder ``guard``'s per-row state. False (and nothing
    done) for an object no transformers code reorders, or one whose ``reorder_cache`` someone
    else replaced on the instance."""
    if not callable(getattr(type(cache), compat.REORDER, None)):
        return False
    wrapper = vars(cache).get(compat.REORDER)
    if wrapper is None:
        wrapper = BeamFollower(cache)
        setattr(cache, compat.REORDER, wrapper)
    elif not isinstance(wrapper, BeamFollower):
        return False
    wrapper.guards.append(weakref.ref(guard))
    return True


def release(cache, guard) -> None:
    """Stop ``guard`` following ``cache``; the last guard to leave gives the cache its own ``reorder_cache`` back."""
    wrapper = vars(cache).get(compat.REORDER)
    if isinstance(wrapper, BeamFollower):
        wrapper.guards[:] = [ref for ref in wrapper.guards if ref() not in (guard, None)]
        if not wrapper.guards:
            delattr(cache, compat.REORDER)
