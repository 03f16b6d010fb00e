"""Virtual CUDA devices for a CPU-only build: tensors that report ``cuda:N`` and compute on the CPU.

A model split over GPUs (``device_map``) fails when one operation meets tensors of two devices.
Inside :func:`virtual_cuda`, ``.to("cuda:1")``, ``device="cuda:0"`` and friends give tensors that
carry that device, every operation first checks that its tensors share one device (as CUDA does:
0-dim CPU tensors mix with anything, CPU index tensors may index a CUDA tensor), and then runs
on the underlying CPU data. So a split model's cross-device slip raises here as it would on GPUs,
and its values are those of the same model on the CPU. Inference only (no autograd).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CPU = torch.device("cpu")
#: Functions that look at tensors without computing on them (module.to's plumbing).
_AS_IS = {"_has_compatible_shallow_copy_type", "swap_tensors", "__set__"}
#: Properties the wrapper answers itself; any other property is read from the CPU data.
_OWN = {"device", "is_cuda", "is_cpu", "shape", "dtype", "requires_grad", "ndim", "grad_fn", "is_leaf", "layout"}
#: Operations where CUDA accepts CPU index tensors next to a CUDA tensor.
_INDEXING = {"__getitem__", "__setitem__", "index_select", "index_put_", "index_put"}


class OnDevice(torch.Tensor):
    """A tensor that says it lives on ``device`` and keeps its values in a CPU tensor."""

    @staticmethod
    def __new__(cls, data: torch.Tensor, device: torch.device) -> OnDevice:
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, data.shape, strides=data.stride(), storage_offset=data.storage_offset(), dtype=data.dtype,
            device=device, requires_grad=data.requires_grad,
        )  # fmt: skip
        wrapper._data = data
        return wrapper

    def __repr__(self) -> str:
        return f"OnDevice({self._data!r}, device={self.device})"

    def __tensor_flatten__(self):  # lets nn.Module.to swap parameters for wrappers
        return ["_data"], self.device

    @staticmethod
    def __tensor_unflatten__(inner: dict, device: torch.device, outer_size, outer_stride) -> OnDevice:
        return OnDevice(inner["_data"], device)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} reached a virtual-device tensor outside `virtual_cuda()`.")


def _cuda(device) -> torch.device:
    device = torch.device(device)
    return torch.device("cuda", 0) if device.type == "cuda" and device.index is None else device


def _wrap(value, device: torch.device):
    if not isinstance(value, torch.Tensor) or isinstance(value, OnDevice) or device.type == "cpu":
        return value
    return OnDevice(value.detach() if isinstance(value, torch.nn.Parameter) else value, device)


def _unwrap(value):
    if isinstance(value, slice):  # x[:, :n] with a tensor n
        return slice(_unwrap(value.start), _unwrap(value.stop), _unwrap(value.step))
    return value._data if isinstance(value, OnDevice) else value


def _target(name: str, args: tuple, kwargs: dict) -> tuple[torch.device | None, tuple, dict]:
    """The device a call moves or creates its result on (``None``: where its inputs are), and the
    call rewritten to do the same on the CPU."""
    if name == "to":
        device, *_ = torch._C._nn._parse_to(*args[1:], **{k: v for k, v in kwargs.items() if k in ("device", "dtype")})
        if device is None:
            return None, args, kwargs
        other = next((a for a in args[1:] if isinstance(a, torch.Tensor)), None)
        rest = (other.dtype,) if other is not None else tuple(a for a in args[1:] if not isinstance(a, (str, torch.device)))
        return _cuda(device), (args[0], *rest), {k: v for k, v in kwargs.items() if k != "device"}
    if name in ("cuda", "cpu"):
        device = CPU if name == "cpu" else _cuda(args[1] if len(args) > 1 else kwargs.get("device") or "cuda")
        return device, (args[0],), {}
    if kwargs.get("device") is not None:
        return _cuda(kwargs["device"]), args, {**kwargs, "device": CPU}
    return None, args, kwargs


class _VirtualCuda(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":
            owner = args[0]
            if not isinstance(owner, OnDevice) or getattr(getattr(func, "__self__", None), "__name__", None) in _OWN:
                with torch._C.DisableTorchFunction():
                    return func(*args, **kwargs)
            return _wrap(func(owner._data, *args[1:], **kwargs), owner.device)
        if name in _AS_IS:
            with torch._C.DisableTorchFunction():
                return func(*args, **kwargs)
        if name in ("cuda", "cpu"):
            func = torch.Tensor.to
        target, args, kwargs = _target(name, args, kwargs)
        if name in ("to", "cuda", "cpu") and target is not None and target != args[0].device:
            kwargs = {**kwargs, "copy": True}  # a move between devices always copies
        flat, _ = tree_flatten((args, kwargs))
        devices = {t.device for t in flat if isinstance(t, torch.Tensor) and (isinstance(t, OnDevice) or t.dim() > 0)}
        if name in _INDEXING and len(devices) > 1:
            devices.discard(CPU)
        if target is None and len(devices) > 1:
            found = ", ".join(sorted(map(str, devices)))
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, {found} ({name})")
        with torch._C.DisableTorchFunction():
            out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        device = target or (devices.pop() if devices else CPU)
        return tree_map(lambda t: _wrap(t, device), out)


@contextlib.contextmanager
def virtual_cuda() -> Iterator[None]:
    """Inside: ``cuda:N`` devices exist (see the module docstring). Use with ``torch.no_grad()``."""
    torch.cuda._tls.is_initializing = True  # tensors of a CUDA device without initialising CUDA
    try:
        with _VirtualCuda():
            yield
    finally:
        del torch.cuda._tls.is_initializing
