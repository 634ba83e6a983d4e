"""Training and evaluation of restr_fast models, imported as ``restr_fast.training``."""
from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .evaluate import evaluate
from .trainer import StepBatchSampler, TrainConfig, TrainingDiverged, load_run_config, train

__all__ = ["TrainConfig", "train", "evaluate", "load_checkpoint", "save_checkpoint", "model_from_checkpoint",
           "StepBatchSampler", "TrainingDiverged", "load_run_config"]
