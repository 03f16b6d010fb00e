"""adapt-hooks: keep Hugging Face vision-language models looking at the image.

ADAPT anchors the text-to-image attention on what the first generated tokens looked at, watches
it drift during decoding, and steers it back only when it drifts.
"""

from ._version import __version__
from .adapters import Adapter, register_adapter, supported_models
from .anchor import Anchor
from .calibration import estimate_debias_mask
from .debias import DebiasMask
from .hooks.guard import Guard, guard
from .layout import Grid, GridSpec, ImageLayout
from .methods.adapt import ADAPT
from .methods.base import AttentionStep, Method, Prompt
from .methods.pai import PAI
from .methods.vcd import VCD
from .monitor import DriftMonitor
from .risk import RiskModel, RiskStopping
from .risk_fitting import fit_risk
from . import stress
from .training.dpo import VAGDPOLoss, dpo_loss
from .training.logps import SequenceLogps, reference_logps, sequence_logps
from .training.pairs import VAGDPOCollator, compute_anchor, make_vagdpo_pair

__all__ = [
    "ADAPT",
    "Adapter",
    "Anchor",
    "AttentionStep",
    "DebiasMask",
    "DriftMonitor",
    "Grid",
    "GridSpec",
    "Guard",
    "ImageLayout",
    "Method",
    "PAI",
    "Prompt",
    "RiskModel",
    "RiskStopping",
    "SequenceLogps",
    "VCD",
    "VAGDPOCollator",
    "VAGDPOLoss",
    "compute_anchor",
    "dpo_loss",
    "make_vagdpo_pair",
    "reference_logps",
    "sequence_logps",
    "stress",
    "estimate_debias_mask",
    "fit_risk",
    "guard",
    "register_adapter",
    "supported_models",
]
