"""Independent re-computations for the method tests: plain forwards of the unguarded model over a
prompt and a given continuation (teacher forcing), with the image swapped or hidden by hand."""

from __future__ import annotations

import torch

from adapt_hooks.tiny import tiny_inputs

#: Per-token inputs of the tiny prompts, extended over a continuation.
PER_TOKEN = ("attention_mask", "mm_token_type_ids", "token_type_ids", "cross_attention_mask")


def placeholder_free(model, make_guard, max_new_tokens: int = 5, **kwargs):
    """``(inputs, out, new, run)`` of the first tiny prompts (seeds 0-7) whose guarded continuation
    contains none of the model's media placeholder ids (image, video, audio): a full forward (the
    references here) would take one for a media token, which a decode step does not, so such a
    continuation has no reference."""
    from adapt_hooks.tiny import tiny_inputs

    names = [f"{media}_token_{suffix}" for media in ("image", "video", "audio") for suffix in ("id", "index")]
    media = torch.tensor([v for v in (getattr(model.config, n, None) for n in names) if isinstance(v, int)])
    for seed in range(8):
        inputs = tiny_inputs(model, 2, seed=seed)
        with make_guard() as run:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
        new = out.sequences[:, inputs["input_ids"].shape[1] :]
        if not torch.isin(new, media).any():
            break
    return inputs, out, new, run


def forced_logits(model, inputs: dict, new: torch.Tensor, *, blind: bool = False) -> torch.Tensor:
    """Next-token logits ``[B, T, V]`` (float32) that the plain ``model`` gives at each step of
    continuation ``new`` ``[B, T]``, from one full forward without a cache.

    ``blind`` hides every image-placeholder key from every query (zeros in the attention mask;
    Mllama: an all-zero cross-attention mask) and keeps the positions of the unhidden prompt.
    """
    full = dict(inputs)
    full["input_ids"] = ids = torch.cat([inputs["input_ids"], new], 1)
    steps, length = new.shape[1], inputs["input_ids"].shape[1]
    full.setdefault("attention_mask", torch.ones_like(inputs["input_ids"]))
    for name in PER_TOKEN:
        if name not in full:
            continue
        value = full[name]
        if name == "attention_mask":
            tail = torch.ones(value.shape[0], steps, dtype=value.dtype)
        elif name == "cross_attention_mask":
            tail = value[:, -1:].expand(-1, steps, *value.shape[2:])
        else:
            tail = torch.zeros(value.shape[0], steps, dtype=value.dtype)
        full[name] = torch.cat([value, tail], 1)
    if blind:
        seen = {}
        hook = model.get_decoder().register_forward_pre_hook(
            lambda module, args, kwargs: seen.update(positions=kwargs.get("position_ids")), with_kwargs=True
        )
        try:
            model(**full, use_cache=False)
        finally:
            hook.remove()
        full["position_ids"] = seen["positions"]
        if "cross_attention_mask" in full:
            full["cross_attention_mask"] = torch.zeros_like(full["cross_attention_mask"])
        else:
            full["attention_mask"] = full["attention_mask"] * (ids != model.config.image_token_id)
    with torch.no_grad():
        return model(**full, use_cache=False).logits[:, length - 1 : length + steps - 1].float()


def assert_logits_match(got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """The same removed (``-inf``) tokens, and the same values elsewhere."""
    kept = expected.isfinite()
    assert torch.equal(got.isfinite(), kept), "different tokens removed by the plausibility cutoff"
    torch.testing.assert_close(got[kept], expected[kept], rtol=0, atol=atol)


def single_row(inputs: dict, row: int) -> dict:
    """Row ``row`` of a left-padded batch of tiny prompts on its own, padding removed (one image
    per row; Qwen-style flattened patches are cut by ``image_grid_thw``)."""
    kept = inputs["attention_mask"][row].bool()
    out = {}
    for name, value in inputs.items():
        if name in PER_TOKEN or name == "input_ids":
            out[name] = value[row : row + 1][:, kept]
        elif name == "pixel_values" and "image_grid_thw" in inputs:
            patches = inputs["image_grid_thw"].prod(-1)
            start = int(patches[:row].sum())
            out[name] = value[start : start + int(patches[row])]
        else:
            out[name] = value[row : row + 1]
    return out


#: Tensor methods that read a value on the host.
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


def forbid_host_reads(monkeypatch, in_decode: list[bool], where: str = "a decode step") -> None:
    """Make every :data:`HOST_READS` method raise while ``in_decode[0]`` is True."""

    def forbidden(name):
        original = getattr(torch.Tensor, name)

        def check(self, *args, **kwargs):
            if in_decode[0]:
                raise AssertionError(f"Tensor.{name} called in {where}")
            return original(self, *args, **kwargs)

        return check

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, forbidden(name))


def assert_rows_as_alone(model, guard, new_tokens: int = 6) -> None:
    """Each row of a left-padded batch of two tiny prompts, generated inside ``guard()`` (a fresh
    guard per call), gives the tokens and next-token logits it gives on its own."""
    batch = tiny_inputs(model, 2)
    logits = dict(output_logits=True, return_dict_in_generate=True)
    with guard():
        both = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, **logits)
        alone = [model.generate(**single_row(batch, row), max_new_tokens=new_tokens, do_sample=False, **logits) for row in range(2)]
    assert batch["attention_mask"].eq(0).any()
    for row, single in enumerate(alone):
        width = both.sequences.shape[1] - single.sequences.shape[1]
        assert torch.equal(both.sequences[row, width:], single.sequences[0])
        for a, b in zip(both.logits, single.logits):
            assert_logits_match(a[row : row + 1], b, atol=1e-5)
