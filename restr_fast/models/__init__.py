"""The ReSTR model and its parts."""
from .restr import ReSTR, ReSTROutput, build_float32_model, build_model, check_inputs

__all__ = ["ReSTR", "ReSTROutput", "build_float32_model", "build_model", "check_inputs"]
