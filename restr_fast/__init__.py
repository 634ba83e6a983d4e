"""restr_fast: a fast, trainable ReSTR (convolution-free referring image segmentation)."""
from . import text
from .attention import attention_backend
from .compute import count_macs, count_parameters
from .config import PRESETS, ReSTRConfig, get_config
from .diagnostics import doctor
from .losses import LossTerms, loss, loss_terms, patch_labels
from .models import ReSTR, ReSTROutput, build_model
from .predictor import Prediction, Predictor, overlay
from .version import __version__

__all__ = [
    "ReSTRConfig", "PRESETS", "get_config", "build_model", "ReSTR", "ReSTROutput",
    "loss", "loss_terms", "LossTerms", "patch_labels", "count_macs", "count_parameters",
    "attention_backend", "doctor", "text", "Predictor", "Prediction", "overlay", "__version__",
]
