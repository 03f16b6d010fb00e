"""Runnable code blocks of README and docs/ are executed, so the documentation cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_quick_start_runs():
    blocks = [b for b in _python_blocks(ROOT / "README.md") if "tiny_model" in b]
    assert blocks, "README lost its runnable quick start"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_adapters_guide_example_registers_a_working_adapter():
    import torch

    import adapt_hooks
    from adapt_hooks.adapters import _REGISTRY
    from adapt_hooks.tiny import tiny_inputs, tiny_model

    (block,) = _python_blocks(ROOT / "docs" / "adapters.md")
    namespace = {"__name__": "adapters_guide"}
    llava_adapter = _REGISTRY["llava"]
    try:
        exec(compile(block, "adapters.md", "exec"), namespace)
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
    finally:
        _REGISTRY.pop("my_vlm", None)
        _REGISTRY["llava"] = llava_adapter
