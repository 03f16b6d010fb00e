"""A deliberately naive implementation of the same decode-step maths, written the way research
code usually is: attention recomputed with repeated keys, copied to the CPU every step, and
explicit Python loops over layers, rows, heads and image tokens, with the gate decided on the host.

It exists only as a reference: the benchmarks time it against the library on the same model, and
a test checks that both steer to the same tokens. The anchor itself is built with the library's
own ``Anchor.from_layer_maps`` (once per prompt, not the cost being compared).
"""

from __future__ import annotations

import math

import torch

from adapt_hooks import Anchor, compat
from adapt_hooks.adapters import get_adapter


class NaiveGuard:
    """``with NaiveGuard(model, tau, alpha, k): model.generate(...)`` on a LLaVA-shaped model whose
    images are one grid per row; "logprior" steering with anchor-normalised AMC, as the library's
    defaults."""

    def __init__(self, model, tau: float = 0.6, alpha: float = 0.5, k: int = 5, eps: float = 1e-6) -> None:
        self.model, self.tau, self.alpha, self.k, self.eps = model, tau, alpha, k, eps
        self.adapter = get_adapter(model)
        self.modules = self.adapter.attention_modules(model)
        self.n_layers = len(self.modules)

    def __enter__(self) -> NaiveGuard:
        self._saved = compat.text_attention(self.model)
        compat.register("naive_adapt", self._attention, compat.mask_function("eager"))
        compat.set_text_attention(self.model, "naive_adapt")
        self._hook = self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        compat.set_text_attention(self.model, self._saved)
        compat.unregister("naive_adapt")

    def _on_forward(self, module, args, kwargs) -> None:
        cache = compat.forward_cache(kwargs)
        if cache is None or cache.get_seq_length() == 0:
            layout = self.adapter.layout(self.model.config, kwargs["input_ids"], kwargs)
            self.positions = layout.positions.tolist()
            (self.grid,) = {shape for row in layout.grid_shapes for shape in row}
            self.step = 0
            self.records = {}  # layer -> list of per-step [B][N] lists
            self.anchor = None
            self.anchor_amc = {}
            self.gates = {}  # (step, layer) -> per-row gate decisions
        else:
            self.step += 1

    def _attention(self, module, query, key, value, attention_mask, scaling=None, **kwargs):
        layer = module.layer_idx
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)  # copies every key, every step
        value = value.repeat_interleave(groups, dim=1)
        logits = (query @ key.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
        if attention_mask is not None:
            logits = logits + attention_mask[..., : key.shape[-2]]
        if query.shape[2] == 1 and self.step > 0:
            logits = self._decode(layer, logits)
        probs = torch.softmax(logits.float(), dim=-1).to(query.dtype)
        return (probs @ value).transpose(1, 2).contiguous(), probs

    def _decode(self, layer: int, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1).cpu()  # host copy, every layer, every step
        batch, heads = probs.shape[0], probs.shape[1]
        image = []
        for b in range(batch):
            row = []
            for p in self.positions[b]:
                row.append(sum(probs[b, h, 0, p].item() for h in range(heads)) / heads)
            image.append(row)
        if self.step <= self.k:
            self.records.setdefault(layer, []).append(image)
            if self.step == self.k and layer == self.n_layers - 1:
                self._build_anchor()
            return logits
        bias = torch.zeros(logits.shape[0], logits.shape[-1])
        gates = self.gates[(self.step, layer)] = []
        for b in range(batch):
            total = sum(image[b])
            normalised = [a / total for a in image[b]] if total > 0 else [0.0] * len(image[b])
            w = self.anchor[b]
            score = sum(a * a * w[i] for i, a in enumerate(normalised)) / self.anchor_amc[layer][b]
            gates.append(score < self.tau)
            if score < self.tau:  # decided on the host
                for i, p in enumerate(self.positions[b]):
                    bias[b, p] = self.alpha * math.log(w[i] + self.eps)
        return logits + bias.to(logits.device, logits.dtype)[:, None, None, :]

    def _build_anchor(self) -> None:
        h, w = self.grid
        layers = sorted(self.records)
        maps = torch.tensor(
            [[[sum(step[b][i] for step in self.records[l]) / self.k for i in range(h * w)] for l in layers]
             for b in range(len(self.positions))]
        )  # [B, L, N]
        anchor = Anchor.from_layer_maps(maps.view(len(self.positions), len(layers), h, w), layers, self.n_layers)
        self.anchor = anchor.weights.tolist()
        for l, layer in enumerate(layers):
            self.anchor_amc[layer] = []
            for b, weights in enumerate(self.anchor):
                a = maps[b, l].tolist()
                total = sum(a)
                amc = sum(x * x * weights[i] for i, x in enumerate(a)) / (total * total)
                self.anchor_amc[layer].append(max(amc, 1e-12))
