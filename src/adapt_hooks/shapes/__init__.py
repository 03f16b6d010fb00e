"""The shapes world and the small VLM trained on it: the demo's embedded default and the evidence
benchmark's model, shipped with the package (about 5 MB, no download).

A scene is a few coloured shapes on a dark canvas; in the training captions two partner pairs
co-occur 95 % of the time, so on a scene that shows one without its partner the model often names
the absent partner — a real, language-prior hallucination that the demo can catch.
:mod:`.world` samples and draws scenes, :mod:`.text` holds the vocabulary, captions and the
processor, :mod:`.model` loads the trained ``LlavaForConditionalGeneration`` and its risk model.
"""
