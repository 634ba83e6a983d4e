"""The ReSTR model and its parts."""
from .restr import ReSTR, ReSTROutput, build_model, check_inputs

__all__ = ["ReSTR", "ReSTROutput", "build_model", "check_inputs"]
