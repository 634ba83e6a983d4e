"""The paper's optimiser and learning-rate schedule."""
from __future__ import annotations

import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 5e-4,
                    vision_lr_scale: float = 0.1) -> torch.optim.AdamW:
    """AdamW with the vision encoder at ``lr * vision_lr_scale`` and everything else at ``lr``.

    Biases, norms, embeddings' position tables and the seed token get no weight decay (1-D
    parameters). Uses the fused CUDA implementation when the model is on a GPU.
    """
    vision = {id(parameter) for parameter in _unwrapped(model).vision.parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_vision = id(parameter) in vision
        decays = parameter.dim() > 1 and not name.endswith(("pos_embed", "cls_token", "fusion.seed"))
        groups.setdefault((is_vision, decays), []).append(parameter)
    param_groups = [
        {"params": params, "lr": lr * (vision_lr_scale if is_vision else 1.0),
         "weight_decay": weight_decay if decays else 0.0}
        for (is_vision, decays), params in sorted(groups.items())
    ]
    on_gpu = next(model.parameters()).is_cuda
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=on_gpu or None)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The ReSTR model inside DistributedDataParallel (``module``) or torch.compile (``_orig_mod``)."""
    while not hasattr(model, "vision"):
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if not isinstance(inner, nn.Module):
            raise TypeError(f"build_optimizer takes a ReSTR model (or one wrapped by DistributedDataParallel or "
                            f"torch.compile), got {type(model).__name__}")
        model = inner
    return model


def warmup_poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.1,
                         power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first ``warmup_fraction`` of the steps, then (1 - progress) ** power."""
    warmup = max(1, int(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return max(0.0, 1.0 - progress) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
