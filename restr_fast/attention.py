"""Scaled dot-product attention with interchangeable backends.

Every transformer of the model (vision, language, fusion) calls :func:`attention`; the backend
comes from the config, and :func:`attention_backend` overrides it for a block of code.

Backends:
    ``math``: explicit softmax(q k^T / sqrt(d)) v, the readable reference; materialises the
        (B, H, N, N) score matrix.
    ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
        kernels where PyTorch has them).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F

from .config import ATTENTION_BACKENDS

_override = threading.local()


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Run every attention call inside the block with backend ``name``, whatever the config says."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {list(ATTENTION_BACKENDS)}")
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = previous


def resolve_backend(configured: str) -> str:
    """The backend a call uses: the active override, else the configured one."""
    return getattr(_override, "name", None) or configured


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None,
              backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v.

    Args:
        q, k, v: (B, H, N, d) queries, keys and values.
        key_mask: optional (B, N) bool, True for keys that may be attended to (real tokens);
            every row must keep at least one key.
        backend: ``sdpa`` or ``math`` (overridden by :func:`attention_backend`).

    Returns:
        (B, H, N, d)
    """
    backend = resolve_backend(backend)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if backend == "math":
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1) @ v
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {list(ATTENTION_BACKENDS)}")
