"""Words: the vocabulary, captions and questions, parsing mentions, and a real ``LlavaProcessor``.

Prompts are ``"<image> describe :"`` and ``"<image> is there a red circle ?"`` (the processor
expands ``<image>`` into the 36 image tokens); answers are a caption such as
``"there is a red circle , a blue square and a white ring ."`` (objects in canonical kind order)
or ``"yes"`` / ``"no"``, followed by ``</s>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .world import IMAGE_SIZE, KINDS, kind_name

PAD, BOS, EOS, IMAGE, UNK = 0, 1, 2, 3, 4
SPECIAL = ("<pad>", "<s>", "</s>", "<image>", "<unk>")
WORDS = ("describe", ":", "is", "there", "a", "and", ",", ".", "?", "yes", "no")
COLOURS = tuple(sorted({c for c, _ in KINDS}))
SHAPES = tuple(sorted({s for _, s in KINDS}))
VOCAB: tuple[str, ...] = SPECIAL + WORDS + COLOURS + SHAPES
WORD_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
YES, NO = WORD_ID["yes"], WORD_ID["no"]

PATCH = 8
GRID = IMAGE_SIZE // PATCH  # 6 x 6 image tokens
N_IMAGE_TOKENS = GRID * GRID

DESCRIBE = "describe :"


def question(kind: int) -> str:
    return f"is there a {kind_name(kind)} ?"


def caption(kinds: Iterable[int]) -> str:
    """The caption of a set of kinds, in canonical (kind id) order."""
    names = [kind_name(k) for k in sorted(set(kinds))]
    body = names[0] if len(names) == 1 else " , a ".join(names[:-1]) + " and a " + names[-1]
    return f"there is a {body} ."


def encode(text: str) -> list[int]:
    return [WORD_ID[w] for w in text.split()]


def decode(ids: Sequence[int]) -> str:
    return " ".join(VOCAB[i] for i in ids if i not in (PAD, EOS))


def prompt_ids(text: str) -> list[int]:
    """Token ids of ``"<image> " + text`` after the processor's image-token expansion."""
    return [IMAGE] * N_IMAGE_TOKENS + encode(text)


def mentions(ids: Sequence[int]) -> set[tuple[str, str]]:
    """Every colour-shape bigram in a generated text (a kind, or a non-existent combination)."""
    words = [VOCAB[i] for i in ids]
    return {(a, b) for a, b in zip(words, words[1:]) if a in COLOURS and b in SHAPES}


def mention_steps(ids: Sequence[int]) -> list[tuple[int, int]]:
    """``(index of the colour word, kind)`` of each kind mention of a generated caption; every
    kind has its own colour, so the colour word is where the caption commits to a kind."""
    words = [VOCAB[i] for i in ids]
    return [(j, KINDS.index((a, b))) for j, (a, b) in enumerate(zip(words, words[1:])) if (a, b) in KINDS]


def mentioned_kinds(ids: Sequence[int]) -> set[int]:
    """Kinds named in a generated text."""
    return {KINDS.index(m) for m in mentions(ids) if m in KINDS}


def trim(ids: Sequence[int]) -> list[int]:
    """Generated ids up to (not including) the first ``</s>``."""
    ids = list(ids)
    return ids[: ids.index(EOS)] if EOS in ids else ids


# CLIP normalisation, as the processor applies it (rescale 1/255, then mean/std per channel).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def pixel_values(images: np.ndarray):
    """``uint8 [B, H, W, 3]`` -> normalised ``float32 [B, 3, H, W]``, as the processor computes it."""
    import torch

    x = images.astype(np.float32) / 255.0
    x = (x - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def build_processor():
    """A real ``LlavaProcessor``: CLIP image processing at 48 px and a word-level tokenizer over
    :data:`VOCAB`. No chat template, so ``adapt_hooks.prompts.chat_prompt`` gives ``"<image> q"``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    try:  # transformers >= 5.2x name of the torchvision-free image processor
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    backend = Tokenizer(models.WordLevel(dict(WORD_ID), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )
    images = ImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=CLIP_MEAN.tolist(), image_std=CLIP_STD.tolist(),
    )
    return LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
