"""Turning a question about one image into the text a processor expects."""

from __future__ import annotations


def chat_prompt(processor, question: str) -> str:
    """``question`` about one image, through the processor's chat template (with the generation
    prompt) when it has one, else the processor's image token followed by the question."""
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"{getattr(processor, 'image_token', '<image>')} {question}"
