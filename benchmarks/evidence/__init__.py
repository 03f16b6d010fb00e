"""A small, honest stand-in for the hallucination benchmarks of the ADAPT paper.

Synthetic scenes with strongly correlated object pairs (:mod:`.world`), a word-level vocabulary
and a real ``LlavaProcessor`` (:mod:`.text`), a tiny ``LlavaForConditionalGeneration`` trained
from scratch (:mod:`.model`, ``benchmarks/train_tiny_vlm.py``), CHAIR and POPE metrics
(:mod:`.metrics`), the evaluation suites (:mod:`.evaluate`) and a short VAG-DPO fine-tune
(:mod:`.finetune`). Everything is generated from seeds; only the trained weights are stored.
"""
