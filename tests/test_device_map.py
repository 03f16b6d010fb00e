"""A model split across devices (``device_map``): the guard keeps each hooked layer's state on
that layer's own device and never mixes devices.

Without GPUs, the split runs on virtual CUDA devices (tests/virtual_cuda.py: tensors that carry
``cuda:N`` and compute on the CPU, where any operation meeting two devices raises as it does on
GPUs), dispatched by accelerate's ``dispatch_model``, the function ``from_pretrained(device_map=...)``
uses. Its tokens must equal the unsplit CPU model's under the same guard. A real CPU-and-disk split
loaded by ``from_pretrained(device_map=..., offload_folder=...)`` checks the offload hooks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import dispatch_model

import adapt_hooks
from adapt_hooks import Anchor, DriftMonitor
from adapt_hooks.adapters import get_adapter
from adapt_hooks.tiny import tiny_inputs, tiny_model

from .conftest import _model
from .virtual_cuda import OnDevice, virtual_cuda

STEER = dict(tau=1e9, alpha=2.0)  # every monitored step is steered
MONITORS = {
    "observe": lambda: DriftMonitor(steer=False),
    "steer": lambda: DriftMonitor(**STEER),
    "blend": lambda: DriftMonitor(steering="blend", **STEER),
}


def test_virtual_devices_raise_on_a_cross_device_operation_and_compute_as_the_cpu():
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with torch.no_grad(), virtual_cuda():
        a, b = x.to("cuda:0"), w.to("cuda:1")
        assert (a.device, b.device) == (torch.device("cuda", 0), torch.device("cuda", 1))
        with pytest.raises(RuntimeError, match="cuda:0, cuda:1"):
            torch.nn.functional.linear(a, b)
        with pytest.raises(RuntimeError, match="cpu, cuda:0"):
            a + x
        got = torch.nn.functional.linear(a, b.to(a.device))
        assert got.device == a.device
        assert torch.equal(got.cpu(), torch.nn.functional.linear(x, w))
        assert (a * torch.tensor(2.0)).device == a.device  # 0-dim CPU tensors mix, as on CUDA
        assert a[torch.tensor([2, 0])].device == a.device  # CPU index tensors index CUDA tensors


def _split(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose hooked decoder layers alternate between cuda:0 and cuda:1
    (everything else on cuda:0), dispatched with accelerate's hooks as ``device_map`` does."""
    adapter, names = get_adapter(model), {id(m): name for name, m in model.named_modules()}
    modules = adapter.attention_modules(model)
    hooked = [names[id(modules[i])].rsplit(".", 1)[0] for i in adapter.hookable_layers(model, modules)]
    second = set(hooked[1::2])
    device_map: dict[str, str] = {}

    def place(prefix: str, module: torch.nn.Module) -> None:
        if prefix in second:
            device_map[prefix] = "cuda:1"
        elif not any(name.startswith(f"{prefix}.") for name in second) and prefix:
            device_map[prefix] = "cuda:0"
        else:
            for name, child in module.named_children():
                place(f"{prefix}.{name}" if prefix else name, child)

    place("", model)
    return dispatch_model(copy.deepcopy(model).requires_grad_(False), device_map=device_map)


def _layer_devices(run) -> list[torch.device]:
    return [next(m.parameters()).device for m in run._modules]


def _generate(model, inputs, monitor, **kwargs):
    with adapt_hooks.guard(model, anchor=Anchor(k=3), monitor=monitor) as run:
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, **kwargs)
        return out, run


@pytest.mark.parametrize("mode", MONITORS)
@pytest.mark.parametrize("family,attn", [("llava", "eager"), ("llava", "sdpa"), ("qwen2_vl", "sdpa"), ("mllama", "sdpa")])
def test_split_model_generates_as_the_unsplit_one_with_state_on_each_layers_device(family, attn, mode):
    model = _model(family, attn)
    inputs = tiny_inputs(model, 2)
    expected, reference = _generate(model, inputs, MONITORS[mode]())
    with torch.no_grad(), virtual_cuda():
        split = _split(model)
        got, run = _generate(split, {k: v.to("cuda:0") for k, v in inputs.items()}, MONITORS[mode]())
        devices = _layer_devices(run)
        assert set(devices) == {torch.device("cuda", 0), torch.device("cuda", 1)}
        for slot, device in enumerate(devices):
            state = run.monitor._slots.get(slot)
            if state is not None:
                assert {t.device for t in (state.terms, state.steered)} == {device}
        for method in run.methods:  # per-device constants live on each hooked layer's device
            assert {device for (_, device) in method._cache if isinstance(device, torch.device)} <= set(devices)
        state = run.monitor._state_tensors() + [t for m in run.methods for t in m.state_tensors()]
        assert all(isinstance(t, OnDevice) for t in state)
        history, rate, got = run.monitor.history, run.monitor.intervention_rate, got.cpu()
    assert torch.equal(got, expected)
    assert (rate > 0) == (mode != "observe")
    assert rate == reference.monitor.intervention_rate
    for name, column in reference.monitor.history.items():
        torch.testing.assert_close(history[name], column, equal_nan=True, msg=name)


def test_split_model_beam_search_moves_each_layers_state_with_its_beams():
    model = _model("llava", "sdpa")
    inputs = tiny_inputs(model, 2)
    kwargs = dict(num_beams=2, num_return_sequences=2)
    expected, _ = _generate(model, inputs, DriftMonitor(**STEER), **kwargs)
    with torch.no_grad(), virtual_cuda():
        got, run = _generate(_split(model), {k: v.to("cuda:0") for k, v in inputs.items()}, DriftMonitor(**STEER), **kwargs)
        got = got.cpu()
    assert torch.equal(got, expected)


def test_cpu_and_disk_offload_loaded_with_a_device_map(tmp_path):
    """``from_pretrained(device_map=...)`` with half the text layers offloaded to disk: their
    weights stay on the meta device until accelerate's hooks load them for each forward."""
    model = tiny_model("llava", "sdpa")
    model.save_pretrained(tmp_path / "model")
    inputs = tiny_inputs(model, 2)
    n = model.config.text_config.num_hidden_layers
    device_map = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.language_model.{name}": "cpu" for name in ("embed_tokens", "norm", "rotary_emb")}
    device_map |= {f"model.language_model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(n)}
    offloaded = type(model).from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=tmp_path / "offload", attn_implementation="sdpa"
    )
    assert offloaded.model.language_model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    for monitor in MONITORS.values():
        expected, _ = _generate(model, inputs, monitor())
        got, run = _generate(offloaded, inputs, monitor())
        assert torch.equal(got, expected)
        assert run.anchor.ready
