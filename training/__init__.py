"""Training and evaluation of restr_fast models, imported as ``restr_fast.training``."""
