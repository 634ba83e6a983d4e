"""Device names as users write them: ``auto``, ``cpu``, ``cuda``, ``cuda:N``."""
from __future__ import annotations

import torch


def parse_device(device: str | torch.device) -> torch.device | None:
    """``device`` as a torch device (None for ``auto``); a ValueError naming the choices otherwise."""
    if device == "auto":
        return None
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from error
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
    return target


def resolve_device(device: str | torch.device) -> torch.device:
    """The device to run on: ``auto`` is CUDA when a GPU is present, else the CPU; a CUDA device
    this machine does not have is a ValueError."""
    target = parse_device(device)
    if target is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {target} asked for, but this machine has no usable CUDA GPU: use auto or cpu")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise ValueError(f"device {target} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         f"GPU(s): use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return target
