"""adapt-hooks: keep Hugging Face vision-language models looking at the image.

ADAPT anchors the text-to-image attention on what the first generated tokens looked at, watches
it drift during decoding, and steers it back only when it drifts.
"""

from .adapters import Adapter, Grid, GridSpec, ImageLayout, register_adapter, supported_models
from .anchor import Anchor
from .debias import DebiasMask, estimate_debias_mask
from .dpo import VAGDPOLoss, dpo_loss
from .guard import Guard, guard
from .logps import SequenceLogps, reference_logps, sequence_logps
from .monitor import DriftMonitor
from .pairs import VAGDPOCollator, compute_anchor, make_vagdpo_pair

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Anchor",
    "DebiasMask",
    "DriftMonitor",
    "Grid",
    "GridSpec",
    "Guard",
    "ImageLayout",
    "SequenceLogps",
    "VAGDPOCollator",
    "VAGDPOLoss",
    "compute_anchor",
    "dpo_loss",
    "make_vagdpo_pair",
    "reference_logps",
    "sequence_logps",
    "estimate_debias_mask",
    "guard",
    "register_adapter",
    "supported_models",
]
