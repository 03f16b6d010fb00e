"""Shared pieces of the tiny models: the token-id convention, left padding and tiled image prompts."""

from __future__ import annotations

from collections.abc import Callable

import torch

PAD, BOS, EOS, IMAGE, VIDEO, VISION_START, VISION_END, UNK = 0, 1, 2, 3, 4, 5, 6, 7
VOCAB = 64
FIRST_TEXT_ID = 10

#: Keyword arguments of a tiny Llama-like text config (4 layers, hidden 32, 4 heads, 2 kv heads).
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
)


def text_tokens(row: int, generator: torch.Generator) -> list[int]:
    """The text part of row ``row``'s prompt: ``6 + 3 * row`` random text ids."""
    return torch.randint(FIRST_TEXT_ID, VOCAB, (6 + 3 * row,), generator=generator).tolist()


def left_pad(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of the rows, left padded to a common length."""
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), PAD)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tiled_inputs(
    batch: int,
    images: bool,
    generator: torch.Generator,
    tiles: tuple[int, ...],
    image_tokens: Callable[[int], list[int]],
    image_size: int,
) -> dict[str, torch.Tensor]:
    """Prompts of families whose images arrive as square tiles stacked in one ``pixel_values``:
    row ``b`` holds one image of ``tiles[b % len(tiles)]`` tiles, laid out by ``image_tokens``."""
    rows, n_tiles = [], 0
    for b in range(batch):
        image: list[int] = []
        if images:
            count = tiles[b % len(tiles)]
            image = image_tokens(count)
            n_tiles += count
        rows.append([BOS] + image + text_tokens(b, generator))
    out = left_pad(rows)
    if images:
        out["pixel_values"] = torch.randn(n_tiles, 3, image_size, image_size, generator=generator)
    return out
