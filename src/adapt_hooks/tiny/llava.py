"""Tiny LLaVA-1.5: CLIP vision (48 px, patch 6 -> 8x8 = 64 image tokens) + Llama text."""

from __future__ import annotations

import torch

from ._common import BOS, EOS, FIRST_TEXT_ID, IMAGE, PAD, TEXT, UNK, left_pad, text_tokens

MODEL_TYPE = "llava"
IMAGE_SIZE, PATCH = 48, 6


def config():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    side = IMAGE_SIZE // PATCH
    return LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**TEXT), image_token_index=IMAGE,
        image_seq_length=side * side, vision_feature_select_strategy="default", vision_feature_layer=-1,
        pad_token_id=PAD,
    )


def inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    n_image = model.config.image_seq_length if images else 0
    rows = [[BOS] + [IMAGE] * n_image + text_tokens(b, generator) for b in range(batch)]
    out = left_pad(rows)
    if images:
        out["pixel_values"] = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return out


#: Words of the tiny processor's vocabulary (ids from FIRST_TEXT_ID on, in this order: ids 10..63).
WORDS = (
    "describe the image . user assistant : what is in "
    "a an and there are of on left right top bottom middle , "
    "red green blue yellow white black purple orange "
    "circle square triangle ring cross diamond dot line "
    "small big one two three many no yes near far above below beside under over"
).split()


def processor():
    """A real ``LlavaProcessor`` for the tiny LLaVA: CLIP image processing at 48 px and a
    word-level tokenizer over :data:`WORDS`, with a chat template ("user : <image> ... assistant :")."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    try:  # transformers >= 5.2x name of the torchvision-free image processor
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<image>": IMAGE, "<unk>": UNK}
    vocab.update({word: FIRST_TEXT_ID + i for i, word in enumerate(WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="left",
    )
    images = ImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    template = (
        "{% for m in messages %}user : {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} assistant :"
    )
    return LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=template,
    )


def demo_image(seed: int = 0):
    """A generated test scene at the processor's size: a few coloured shapes on a dark canvas."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (24, 24, 32))
    draw = ImageDraw.Draw(image)
    for colour in ((230, 60, 50), (60, 120, 240), (250, 210, 60)):
        x, y, r = rng.randrange(6, IMAGE_SIZE - 6), rng.randrange(6, IMAGE_SIZE - 6), rng.randrange(4, 9)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return image


def video_llava_config():
    """Tiny Video-LLaVA: the tiny LLaVA's CLIP tower and text, images passed as ``pixel_values_images``."""
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH)  # fmt: skip
    side = IMAGE_SIZE // PATCH
    return VideoLlavaConfig(vision_config=vision, text_config=LlamaConfig(**TEXT), image_token_index=IMAGE, video_token_index=4,
                            image_seq_length=side * side, video_seq_length=8 * (side * side + 1),
                            vision_feature_select_strategy="default", vision_feature_layer=-1, pad_token_id=PAD)  # fmt: skip


def video_llava_inputs(model, batch: int, images: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    out = inputs(model, batch, images, generator)
    if images:
        out["pixel_values_images"] = out.pop("pixel_values")
    return out
