"""What an adapter knows about a model family: its attention modules, its image tokens and how they
form grids (the :class:`~adapt_hooks.layout.ImageLayout` it produces)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..layout import Grid, GridSpec, ImageLayout


#: ``layer_types`` of attention layers whose KV cache keeps every token (sliding ones only when wide).
FULL, SLIDING = "full_attention", "sliding_attention"
#: ``layer_types`` of DeepSeek-style sparse attention: the cache keeps every key, an indexer picks
#: each query's top-k among them (the attention function receives the pick, see ``compat.index_mask``).
INDEXED = "indexed_attention"


def cache_keeping_layers(text_config, n_layers: int) -> list[int]:
    """Layers whose KV cache holds every token of any sequence the model supports: full-attention
    layers and indexed (DSA) layers (``layer_types``), and sliding-window layers whose window is at
    least ``max_position_embeddings``; every layer of a model without ``layer_types`` or a sliding
    window. Linear-attention, convolution and chunked-attention layers (hybrid decoders) keep no
    such cache and are never among them."""
    window = getattr(text_config, "sliding_window", None)
    max_positions = getattr(text_config, "max_position_embeddings", None)
    wide = window is None or (max_positions is not None and window >= max_positions)
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is None:
        return list(range(n_layers)) if wide else []
    return [i for i, kind in enumerate(layer_types[:n_layers]) if kind in (FULL, INDEXED) or (kind == SLIDING and wide)]


def grids_per_row(units: Sequence[tuple[int, int]], n_tokens: Sequence[int]) -> list[list[tuple[int, int]]] | None:
    """Split per-image (or per-slice) grids, listed in prompt order, among the rows that hold
    ``n_tokens`` image tokens each; ``None`` when they do not fit. Besides one entry per image of
    every row, it accepts what ``generate`` makes of per-image inputs for beams before 5.23: each
    entry repeated ``e`` times in place (``repeat_interleave``), or left as it was, once per sample,
    while every sample's row is repeated ``e`` times."""
    rows = take_in_order(units, n_tokens)
    if rows is not None:
        return rows
    batch = len(n_tokens)
    for e in range(2, batch + 1):
        samples = n_tokens[::e]
        if batch % e or any(n_tokens[i] != samples[i // e] for i in range(batch)):
            continue
        once = list(units[::e]) if len(units) % e == 0 and all(units[i] == units[i - i % e] for i in range(len(units))) else None
        for candidate in (units, once):
            per_sample = None if candidate is None else take_in_order(candidate, samples)
            if per_sample is not None:
                return [row for row in per_sample for _ in range(e)]
    return None


def take_in_order(units: Sequence[tuple[int, int]], n_tokens: Sequence[int]) -> list[list[tuple[int, int]]] | None:
    """``units`` (grids in prompt order) handed to the rows in order, or ``None`` when they do not
    take exactly each row's ``n_tokens`` image tokens."""
    rows, i = [], 0
    for n in n_tokens:
        row, held = [], 0
        while held < n and i < len(units):
            row.append(tuple(units[i]))
            held, i = held + units[i][0] * units[i][1], i + 1
        if held != n:
            return None
        rows.append(row)
    return rows if i == len(units) else None


def image_runs(is_image: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive image tokens in one row (``is_image`` ``[L]``)."""
    index = torch.nonzero(is_image).flatten()
    if index.numel() == 0:
        return []
    breaks = torch.nonzero(index.diff() != 1).flatten() + 1
    return [int(run.numel()) for run in torch.tensor_split(index, breaks.tolist())]


class Adapter:
    """Per-family knowledge: which attention modules to hook, the image token id, and how one
    row's image tokens split into 2-D grids. Subclasses override :meth:`row_grids`."""

    #: ``model_type`` values (``model.config.model_type``) this adapter handles.
    model_types: tuple[str, ...] = ()
    #: An example checkpoint, for documentation and error messages.
    example_checkpoint: str = ""
    #: Forward inputs that pack every image of the batch along their last axis (NaViT packing,
    #: ``[1, C, P, patches * P]``) instead of stacking images along the first; contrast streams
    #: append their images there.
    packed_inputs: frozenset[str] = frozenset()

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The text decoder's layers (``model.get_decoder().layers``)."""
        decoder = model.get_decoder()
        layers = getattr(decoder, "layers", None)
        if layers is None:
            raise ValueError(f"{type(model).__name__}: its decoder {type(decoder).__name__} has no `.layers`.")
        return layers

    def attention_modules(self, model: nn.Module) -> list[nn.Module | None]:
        """The text decoder's self-attention modules, in layer order; ``None`` for a layer without
        one (the linear-attention or convolution layers of a hybrid decoder)."""
        return [getattr(layer, "self_attn", None) for layer in self.decoder_layers(model)]

    def hookable_layers(self, model: nn.Module, modules: list[nn.Module | None]) -> list[int]:
        """Indices of the layers whose keys include the image tokens at every decode step (the
        default ``layers`` of a guard): the attention layers whose cache keeps every token (see
        :func:`cache_keeping_layers`); a clear error when there are none."""
        text_config = model.config.get_text_config()
        layers = [i for i in cache_keeping_layers(text_config, len(modules)) if modules[i] is not None]
        if not layers:
            kinds = getattr(text_config, "layer_types", None)
            window = getattr(text_config, "sliding_window", None)
            what = f"its text layers are {', '.join(sorted(set(kinds[: len(modules)])))}" if kinds else "every text layer is windowed"
            what += f", with a sliding window of {window} tokens" if window else ""
            raise ValueError(
                f"{model.config.model_type}: {what} (no full-attention layer whose cache keeps every token), so no layer "
                "keeps the image keys for the whole generation; adapt-hooks cannot watch this model."
            )
        return layers

    def hide_images(self, inputs: dict[str, object], image_tokens: torch.Tensor, length: int) -> None:
        """Make the prompt's image tokens invisible to every query of these rows, in place: the
        forward call's 2-D ``attention_mask`` (all ones when absent, ``length`` keys long) gets
        zeros where ``image_tokens`` (``[B, P]``, the prefill's image placeholders) is True. The
        rows then read like an image-free prompt of the same length and positions (the contrast
        stream of PAI's CFG step)."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = torch.ones(ids.shape[0], length, dtype=torch.long, device=ids.device) if mask is None else mask
        if mask.ndim != 2:
            raise ValueError(f"{type(self).__name__}.hide_images needs a 2-D attention_mask, got {mask.ndim}-D.")
        prefill = image_tokens.shape[1]
        visible = torch.cat([~image_tokens.to(mask.device), mask.new_ones(mask.shape[0], mask.shape[1] - prefill, dtype=torch.bool)], 1)
        inputs["attention_mask"] = mask * visible

    def image_token_id(self, config) -> int:
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{config.model_type}: the config has no image_token_id / image_token_index.")

    def image_mask(self, config, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool: which prefill tokens are image tokens (default: the image token id)."""
        return input_ids == self.image_token_id(config)

    @staticmethod
    def required_input(config, inputs: Mapping[str, object], name: str, n_tokens: Sequence[int]):
        """``inputs[name]``, which ``row_grids`` needs to place the image tokens; ``None`` when it is
        absent and no row has image tokens; a ``ValueError`` naming it when rows do."""
        value = inputs.get(name)
        if value is None and any(n_tokens):
            raise ValueError(
                f"{config.model_type}: the prompt has image tokens but the forward call has no {name}; "
                "pass it as the processor returns it."
            )
        return value

    def row_grids(
        self, config, is_image: torch.Tensor, n_tokens: Sequence[int], inputs: Mapping[str, object]
    ) -> list[list[GridSpec | tuple[int, int]]]:
        """For each row, its image grids in order of appearance: ``(height, width)`` for a
        contiguous row-major grid, or a :class:`GridSpec`. Together they must consume exactly the
        row's image tokens.

        ``is_image`` ``[B, L]`` marks the image tokens of the prefill's ``input_ids``, ``n_tokens[b]``
        counts them per row; ``inputs`` are the keyword arguments of the prefill forward call
        (``image_grid_thw``, ``position_ids``, ...).
        """
        raise NotImplementedError

    def layout(self, config, input_ids: torch.Tensor, inputs: Mapping[str, object]) -> ImageLayout:
        """Read image positions from the prefill's ``input_ids`` and place them on grids."""
        is_image = self.image_mask(config, input_ids)
        counts = is_image.sum(-1).tolist()
        specs = self.row_grids(config, is_image, counts, inputs)
        rows, grids = [], []
        for b, row in enumerate(specs):
            row = [spec if isinstance(spec, GridSpec) else GridSpec(*spec) for spec in row]
            consumed = sum(spec.span for spec in row)
            if consumed != counts[b]:
                raise ValueError(
                    f"{config.model_type}: row {b} has {counts[b]} image tokens but its grids "
                    f"{[(g.height, g.width) for g in row]} take {consumed}. The prompt's image tokens do not "
                    "match the images passed (check the processor output or the adapter)."
                )
            image_index = torch.nonzero(is_image[b]).flatten()
            start, offset, keys, row_grids = 0, 0, [], []
            for spec in row:
                keys.append(image_index[start + spec.token_index().to(image_index.device)])
                row_grids.append(Grid(offset, spec.height, spec.width))
                start += spec.span
                offset += spec.height * spec.width
            rows.append(torch.cat(keys) if keys else image_index[:0])
            grids.append(tuple(row_grids))
        n_max = max((len(r) for r in rows), default=0)
        positions = torch.zeros(len(rows), n_max, dtype=torch.long, device=input_ids.device)
        valid = torch.zeros(len(rows), n_max, dtype=torch.bool, device=input_ids.device)
        for b, keys in enumerate(rows):
            positions[b, : len(keys)] = keys
            valid[b, : len(keys)] = True
        return ImageLayout(positions, valid, tuple(grids), input_ids.shape[1])


class RepeatedGridAdapter(Adapter):
    """A family whose image tokens are whole copies of one fixed grid, one per image or per tile
    (LLaVA, Gemma 3, PaliGemma, InternVL, Idefics3, Aya Vision...): only :meth:`grid` to write."""

    #: What one grid is, for error messages: "image", "tile", "image or crop".
    unit = "image"

    def grid(self, config) -> tuple[int, int]:
        """``(height, width)`` in tokens of one grid, from the model's config."""
        raise NotImplementedError

    def row_grids(self, config, is_image, n_tokens, inputs):
        height, width = self.grid(config)
        size = height * width
        grids = []
        for b, n in enumerate(n_tokens):
            if n % size:
                raise ValueError(
                    f"{config.model_type}: row {b} has {n} image tokens, not a multiple of {size} "
                    f"({height}x{width} per {self.unit}); the prompt's image tokens do not match the model's images."
                )
            grids.append([(height, width)] * (n // size))
        return grids
