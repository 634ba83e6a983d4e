"""Registering Triton ops with torch.library, and deciding where the kernels can run."""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch.library import custom_op, triton_op

# Triton decides at import (``@triton.jit``) whether kernels run on its CPU interpreter.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def register_triton_op(name: str, *, fake: Callable) -> Callable:
    """Register ``fn`` as the op ``name`` (no mutated arguments).

    On a GPU it becomes a ``torch.library.triton_op``: ``torch.compile`` traces into its kernels and
    ``fn`` serves as its own fake. Under Triton's interpreter ``wrap_triton`` hands back the bare
    kernel, which cannot be traced, so there the op is an opaque ``custom_op`` whose output shapes
    come from ``fake``: compiled graphs still call it without a break.
    """
    def register(fn: Callable):
        if INTERPRETED:
            op = custom_op(name, fn, mutates_args=())
            op.register_fake(fake)
            return op
        return triton_op(name, fn, mutates_args=())
    return register


def eager_autograd(forward: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """``forward`` with the backward of a registered op, as a ``torch.autograd.Function``.

    Eager calls go through this rather than through ``torch.ops``: torch.library's Python dispatch
    and autograd wrapper cost about 60 us a call on one CPU core (measured against 15 us for this
    Function), as long as a small kernel runs on a GPU. ``setup_context(ctx, inputs, output)`` and
    ``backward(ctx, *grads)`` are the ones registered with the op; gradients of unused outputs
    arrive as None, as they do there. Without gradients to track (``torch.no_grad``, inference),
    ``forward`` runs directly.
    """
    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            ctx.set_materialize_grads(False)
            output = forward(*inputs)
            setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    def call(*inputs):
        if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs):
            return Function.apply(*inputs)
        return forward(*inputs)  # nothing to differentiate: skip the Function's cost (about 10 us)

    return call


def kernel_can_run(tensor: torch.Tensor) -> bool:
    """Whether Triton kernels can run on ``tensor``'s device: CUDA, or the CPU under the interpreter."""
    return tensor.device.type == "cuda" or (tensor.device.type == "cpu" and INTERPRETED)


def unit_stride(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor`` itself when its last dimension is contiguous (kernels take any other strides), else a copy."""
    if tensor is None or tensor.stride(-1) == 1:
        return tensor
    return tensor.contiguous()
