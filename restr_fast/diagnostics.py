"""``restr-fast doctor``: what this machine offers the model (versions, GPU, attention backends)."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from .attention import backend_status
from .devices import resolve_device
from .version import __version__

PACKAGES = ("triton", "xformers", "timm")


def doctor(device: torch.device | str | None = None) -> str:
    """A short report: Python, torch (and its CUDA), triton, xformers and timm versions, the GPU and
    its memory (or "no GPU"), and each attention backend on ``device`` (default: the first GPU if
    there is one, else the CPU) with "available" or the one-line reason it is not, and what
    ``auto`` picks there.

    Importing xformers is left to the CUDA probe: on a CPU-only machine it is never imported.
    """
    device = resolve_device("auto" if device is None else device)
    lines = [f"restr-fast {__version__}", f"python {platform.python_version()}",
             f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"]
    lines += [f"{name} {_version(name)}" for name in PACKAGES]
    lines.append(f"gpu {_gpu()}")
    lines.append(f"attention backends on {device}:")
    lines += [f"  {name:<10}{state}" for name, state in backend_status(device).items()]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _gpu() -> str:
    if not torch.cuda.is_available():
        return "no GPU (torch.cuda.is_available() is False)"
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append(f"cuda:{index} {properties.name}, {properties.total_memory / 2**30:.1f} GiB, "
                    f"compute capability {properties.major}.{properties.minor}")
    return "; ".join(gpus)
