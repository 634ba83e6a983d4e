"""Scaled dot-product attention with interchangeable backends.

Every transformer of the model (vision, language, fusion) calls :func:`attention`; the backend
comes from the config, and :func:`attention_backend` overrides it for a block of code.

Backends:
    ``math``: explicit softmax(q k^T / sqrt(d)) v, the readable reference; materialises the
        (B, H, N, N) score matrix.
    ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
        kernels where PyTorch has them).
    ``xformers``: ``xformers.ops.memory_efficient_attention``; CUDA only. Imported on first use,
        and usable only where a tiny probe call succeeds on the device (see :func:`xformers_status`).
    ``auto``: per device type, the backend the benchmark suite measured fastest (:data:`AUTO_BACKEND`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import threading
from typing import Iterator

import torch
import torch.nn.functional as F

from .config import ATTENTION_BACKENDS

# What ``auto`` runs, per device type: the backend measured fastest there (forward + backward,
# B=8, H=12, head dim 64, bf16; DESIGN.md section 5 and the benchmark suite's attention group).
#   cuda: sdpa. On an H200 (torch 2.11) xformers 0.0.35 took 0.73 ms vs SDPA's 0.29 ms at
#         N=920, and 4.5 vs 3.0 ms at N=3,620. xformers 0.0.35 dispatches to the same PyTorch
#         kernels (aten._efficient_attention_forward / _flash_attention_forward) that SDPA calls,
#         through more Python: beside a torch it was not built for it only adds overhead.
#         Switch this entry only on a measurement that shows xformers faster on the card.
#   cpu:  sdpa. xformers has no CPU operators; math materialises the (B, H, N, N) scores.
# Other device types get sdpa too: PyTorch dispatches it everywhere, so ``auto`` never fails.
AUTO_BACKEND = {"cuda": "sdpa", "cpu": "sdpa"}

_override = threading.local()
_xformers_probes: dict[str, tuple[bool, str]] = {}  # device -> (available, "available" or why not)


@contextlib.contextmanager
def attention_backend(name: str | None) -> Iterator[None]:
    """Run every attention call inside the block with backend ``name``, whatever the config says
    (``None``: the config's backend, lifting an override of an enclosing block)."""
    if name is not None:
        _check_name(name)
    previous = getattr(_override, "name", None)
    _override.name = name
    try:
        yield
    finally:
        _override.name = previous


def backend_override() -> str | None:
    """The backend :func:`attention_backend` sets in this thread, or None."""
    return getattr(_override, "name", None)


def resolve_backend(configured: str, device: torch.device | str = "cpu") -> str:
    """The concrete backend a call on ``device`` runs: the active override, else ``configured``,
    with ``auto`` replaced by its choice for the device type. Raises a ValueError naming the device
    and the alternatives when the chosen backend cannot run there."""
    name = backend_override() or configured
    _check_name(name)
    device = torch.device(device)
    if name == "auto":
        return AUTO_BACKEND.get(device.type, "sdpa")
    if name == "xformers":
        available, reason = xformers_status(device)
        if not available:
            raise ValueError(f"attention backend 'xformers' is not available on {device}: {reason}; "
                             f"use attention='sdpa' or 'auto' (on the command line, --attention sdpa or auto)")
    return name


def backend_status(device: torch.device | str = "cpu") -> dict[str, str]:
    """For each backend, ``"available"`` or ``"not available: <one-line reason>"`` on ``device``;
    ``auto`` maps to ``"-> <the backend it picks>"``."""
    available, reason = xformers_status(device)
    return {"xformers": reason if available else f"not available: {reason}", "sdpa": "available",
            "math": "available", "auto": f"-> {AUTO_BACKEND.get(torch.device(device).type, 'sdpa')}"}


def xformers_status(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``xformers.ops.memory_efficient_attention`` runs on ``device`` (forward and backward,
    bf16, with a key-padding bias), and ``"available"`` or the one-line reason it does not.

    Probed with a tiny call once per device and cached: xformers has no CPU operators, and beside a
    torch other than the one its wheel was built for it runs only through PyTorch's own kernels.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available"
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    if key not in _xformers_probes:
        _xformers_probes[key] = _probe_xformers(device)
    return _xformers_probes[key]


def _probe_xformers(device: torch.device) -> tuple[bool, str]:
    if importlib.util.find_spec("xformers") is None:
        return False, "xformers is not installed (pip install xformers)"
    if device.type != "cuda":
        return False, f"xformers has no operators for {device.type} tensors (its kernels are CUDA-only)"
    try:
        import xformers.ops  # noqa: F401
    except Exception as error:  # a broken install: say why, never fail the caller
        return False, f"xformers cannot be imported: {_first_line(error)}"
    try:
        _probe_call(device)
    except Exception as error:  # no operator dispatches here, or its kernel fails
        import xformers
        hint = ("" if getattr(xformers, "_has_cpp_library", True)
                else " (its own C++/CUDA extensions did not load: the wheel was built for another torch)")
        return False, f"memory_efficient_attention fails on {device}: {_first_line(error)}{hint}"
    return True, "available"


def _probe_call(device: torch.device) -> None:
    """A tiny xformers forward and backward (bf16, key-padding bias) on ``device``, whatever the
    caller's modes (inference mode, no_grad and autocast would make it fail or test something else)."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        q = torch.linspace(-1, 1, 2 * 2 * 5 * 64, device=device).reshape(2, 2, 5, 64)  # (B, H, N, d); no RNG use
        q = q.to(torch.bfloat16).requires_grad_()
        key_mask = torch.tensor([[True] * 5, [False, False, True, True, True]], device=device)  # (B, N)
        _xformers_attention(q, q, q, key_mask).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None,
              backend: str = "auto") -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v.

    Args:
        q, k, v: (B, H, N, d) queries, keys and values.
        key_mask: optional (B, N) bool, True for keys that may be attended to (real tokens);
            every row must keep at least one key. Masked keys never change any output (as long as
            their values are finite: a weight of zero times inf or nan is nan).
        backend: ``auto``, ``xformers``, ``sdpa`` or ``math`` (overridden by :func:`attention_backend`).

    Returns:
        (B, H, N, d)
    """
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.shape != (q.shape[0], k.shape[-2])):
        raise ValueError(f"key_mask must be a ({q.shape[0]}, {k.shape[-2]}) bool tensor, True for real keys, "
                         f"got {key_mask.dtype} of shape {tuple(key_mask.shape)}")
    backend = resolve_backend(backend, q.device)
    if backend == "xformers":
        return _xformers_attention(q, k, v, key_mask)
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_mask: torch.Tensor | None) -> torch.Tensor:
    """xformers' memory-efficient attention on (B, H, N, d) tensors; it takes (B, N, H, d) views.

    Its kernels that take a bias need d to be a multiple of 8 (bf16, fp16) or 4 (fp32): other head
    widths (the language encoder's 300 / 12 = 25) are zero-padded to a multiple of 8, which leaves
    every score and, sliced back, every output unchanged."""
    import xformers.ops as xops

    B, H, N, d = q.shape
    bias = None if key_mask is None else key_padding_bias(key_mask, H, N, q.dtype)
    padding = -d % 8
    if padding:
        q, k, v = (F.pad(t, (0, padding)) for t in (q, k, v))  # (B, H, N, d rounded up to 8)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=bias, scale=d ** -0.5)  # (B, N, H, d + padding)
    return out.transpose(1, 2)[..., :d]  # (B, H, N, d)


def key_padding_bias(key_mask: torch.Tensor, num_heads: int, num_queries: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """The additive attention bias of a key mask: 0 for real keys, -inf for padded ones.

    xformers needs every stride but the last of a tensor bias to be a multiple of 8 elements
    (16 bytes in bf16); for key counts that are not, the bias is a slice of a wider buffer.

    Args:
        key_mask: (B, Nk) bool, True for real keys.
        num_heads, num_queries: H and Nq of the attention call.
        dtype: the dtype of the queries (xformers requires the bias to match).

    Returns:
        (B, H, Nq, Nk), expanded (stride 0) over heads and queries.
    """
    B, Nk = key_mask.shape
    padded = torch.zeros(B, 1, 1, -(-Nk // 8) * 8, dtype=dtype, device=key_mask.device)  # (B, 1, 1, Nk rounded up to 8)
    bias = padded[..., :Nk].masked_fill_(~key_mask[:, None, None, :], float("-inf"))  # (B, 1, 1, Nk)
    return bias.expand(B, num_heads, num_queries, Nk)


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_name(name: str) -> None:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {list(ATTENTION_BACKENDS)}")
