"""Which of transformers' image-text-to-text model types adapt-hooks covers, and why not the others.

Every model type in ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`` of the installed transformers is
*supported* (an adapter and a tiny model that passes the conformance battery), *generic-only*
(a decoder whose prompt carries image placeholder tokens, which ``guard(model, adapter="generic")``
can watch with degraded spatial parts, until it gets an adapter of its own) or *not applicable*,
with the reason. :func:`report` classifies the installed version; ``adapt-hooks coverage`` prints
it and ``docs/adapters.md`` holds the table for the newest tested transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Model types a guard cannot apply to, and why.
NOT_APPLICABLE: dict[str, str] = {
    'blip': "no image tokens in the prompt: the text decoder cross-attends to the vision encoder's output",
    'chameleon': 'early fusion with image generation: the image is VQ codes in the vocabulary, not placeholder tokens filled with vision features',
    'diffusion_gemma': 'a block-diffusion language model with its own generation loop, not autoregressive generate',
    'emu3': 'early fusion with image generation: the image is VQ codes in the vocabulary, not placeholder tokens filled with vision features',
    'evolla': 'protein sequences and text; no images',
    'florence2': 'encoder-decoder: the image features enter the encoder, the decoder cross-attends',
    'git': 'no image tokens in the prompt: the image embeddings are prepended to the text embeddings',
    'idefics': 'no image tokens to attend to: Flamingo-style gated cross-attention reads the image',
    'kosmos-2': 'the image embeddings are placed by image_embeds_position_mask, not by an image token id',
    'kosmos-2.5': 'the image embeddings are placed by image_embeds_position_mask, not by an image token id',
    'mistral4': 'text-only in this mapping (Mistral4ForCausalLM); its images go through mistral3',
    'pi0': 'a robot policy, not a text generator',
    'pi05': 'a robot policy, not a text generator',
    'pix2struct': 'encoder-decoder: the image enters the encoder, the decoder cross-attends',
    'pp_formulanet': 'encoder-decoder: the image enters the encoder, the decoder cross-attends',
    't5gemma2': 'encoder-decoder: the image tokens are in the encoder input, the decoder cross-attends',
    'udop': 'encoder-decoder: the image enters the encoder, the decoder cross-attends',
    'vision-encoder-decoder': 'encoder-decoder: the image enters the encoder, the decoder cross-attends',
}

#: Decoders with image placeholder tokens in the prompt that have no adapter yet: the generic adapter
#: applies (its spatial parts are degraded).
GENERIC_ONLY: frozenset[str] = frozenset({
    'apertus1p5', 'aria', 'blip-2', 'cohere_compass', 'cosmos3_edge', 'cosmos3_omni', 'deepseek_ocr2', 'dots3_note',
    'exaone4_5', 'fast_vlm', 'fuyu', 'gemma3n', 'glm5_next', 'glm_ocr', 'glmga', 'got_ocr2', 'granite_docling',
    'hy_v4_vl', 'hyperclovax_vision_v2', 'idefics2', 'inkling2', 'inkling2_loop', 'inkling_mm_model',
    'instructblip', 'instructblipvideo', 'janus', 'lighton_ocr', 'llava_onevision1_5', 'minicpm_ocr', 'minimax_m3_vl', 'muse_glimmer',
    'muse_spark', 'nemotron_h_omni', 'ovis2', 'ovis2_5', 'paddleocr_vl', 'perception_lm', 'pp_chart2table', 'qianfan_ocr',
    'qwen4_exp', 'shieldgemma2', 'step3p7', 'unlimited_ocr', 'video_llama_3', 'vipllava',
})


@dataclass(frozen=True)
class Coverage:
    """One model type of the installed mapping: ``status`` is ``"supported"``, ``"generic-only"``,
    ``"not applicable"`` or ``"unclassified"`` (a model type newer than this release)."""

    model_type: str
    status: str
    detail: str


def image_text_to_text_types() -> list[str]:
    """The model types of the installed transformers' image-text-to-text mapping."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def report() -> list[Coverage]:
    """Every model type of the installed mapping, classified."""
    from .adapters import _REGISTRY
    from .tiny import model_types

    tiny = set(model_types())
    rows = []
    for model_type in image_text_to_text_types():
        if model_type in _REGISTRY:
            adapter = _REGISTRY[model_type]
            battery = "conformance battery on a tiny model" if model_type in tiny else "no tiny model: not tested here"
            rows.append(Coverage(model_type, "supported", f"{type(adapter).__name__}; {battery}; e.g. {adapter.example_checkpoint}"))
        elif model_type in NOT_APPLICABLE:
            rows.append(Coverage(model_type, "not applicable", NOT_APPLICABLE[model_type]))
        elif model_type in GENERIC_ONLY:
            rows.append(Coverage(model_type, "generic-only", 'image placeholder tokens in a decoder: guard(model, adapter="generic"), not tested on this type'))
        else:
            rows.append(Coverage(model_type, "unclassified", "newer than this adapt-hooks release"))
    return rows


def markdown(rows: list[Coverage]) -> str:
    """The report as a markdown table, with a count per status."""
    counts = {s: sum(r.status == s for r in rows) for s in ("supported", "generic-only", "not applicable", "unclassified")}
    head = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"{len(rows)} model types: {head}.", "", "| model_type | status | detail |", "|---|---|---|"]
    lines += [f"| `{r.model_type}` | {r.status} | {r.detail} |" for r in rows]
    return "\n".join(lines)
