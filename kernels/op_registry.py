"""Registering Triton ops with torch.library, and deciding where the kernels can run."""
from __future__ import annotations

import threading
from typing import Callable

import numpy
import torch
import triton
from torch.library import custom_op, triton_op, wrap_triton

# Triton decides at import (``@triton.jit``) whether kernels run on its CPU interpreter, from
# TRITON_INTERPRET read as it reads it (1, true, on, yes).
INTERPRETED = bool(triton.knobs.runtime.interpret)


def interpreter_incompatibility(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run these kernels with these versions, or None.

    Triton before 3.7 hands loop bounds computed from program ids to ``range`` as one-element
    arrays, which numpy 2.4 no longer converts to integers (triton-lang/triton#9171).
    """
    def major_minor(version: str) -> tuple[int, int]:
        major, minor = version.split(".")[:2]
        return int(major), int("".join(c for c in minor if c.isdigit()) or 0)

    if major_minor(triton_version) < (3, 7) and major_minor(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter (TRITON_INTERPRET=1) cannot run with numpy "
                f"{numpy_version} (triton-lang/triton#9171): install 'numpy<2.4' or 'triton>=3.7'")
    return None


if INTERPRETED and (problem := interpreter_incompatibility(triton.__version__, numpy.__version__)):
    raise ImportError(problem)


def register_triton_op(name: str, *, fake: Callable) -> Callable:
    """Register ``fn`` as the op ``name`` (no mutated arguments).

    On a GPU it becomes a ``torch.library.triton_op``: ``torch.compile`` traces into its kernels and
    ``fn`` serves as its own fake. Under Triton's interpreter the kernel is launched directly
    (``launcher``), which cannot be traced, so there the op is an opaque ``custom_op`` whose output shapes
    come from ``fake``: compiled graphs still call it without a break.
    """
    def register(fn: Callable):
        if INTERPRETED:
            op = custom_op(name, fn, mutates_args=())
            op.register_fake(fake)
            return op
        return triton_op(name, fn, mutates_args=())
    return register


# .bare: whether launcher() hands out bare kernels in this thread (where Triton is not interpreted,
# see launcher). torch keeps a switch of its own
# for its triton_op's eager path (torch._library.triton.set_wrap_triton_enabled), private API; with
# this flag, launcher() also skips wrap_triton's own cost.
_launches = threading.local()


class eager_launches:
    """Context in which the ops' kernels launch eagerly: as bare kernels (see :func:`launcher`), with
    ``device``, their tensors' GPU, as the current device (Triton launches on the current device).

    Eager calls of the ops run inside it: outside torch.compile, ``wrap_triton(kernel)[grid](...)``
    dispatches each launch as a higher-order op, hundreds of microseconds of host time and an entry
    in torch's kernel side table that is never freed (BENCHMARKS.md).
    """
    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device

    def __enter__(self) -> None:
        other_gpu = (self.device is not None and self.device.type == "cuda"
                     and self.device.index != torch.cuda.current_device())
        self.device_guard = torch.cuda.device(self.device) if other_gpu else None
        if self.device_guard is not None:
            self.device_guard.__enter__()
        self.previous = getattr(_launches, "bare", False)
        _launches.bare = True

    def __exit__(self, *exc_info) -> None:
        _launches.bare = self.previous
        if self.device_guard is not None:
            self.device_guard.__exit__(*exc_info)


def device_of(values) -> torch.device | None:
    """The device of the first tensor among ``values``, or None."""
    return next((value.device for value in values if isinstance(value, torch.Tensor)), None)


def launcher(kernel: Callable) -> Callable:
    """``kernel`` made launchable inside a registered op: ``wrap_triton(kernel)`` on a GPU, where
    ``torch.compile`` traces the launch; the bare kernel under :class:`eager_launches`; and under
    the interpreter, where there is nothing to trace (and torch < 2.12's ``wrap_triton`` rejects
    interpreted kernels), the kernel launched one call at a time (:class:`InterpretedLaunches`)."""
    if INTERPRETED:
        return InterpretedLaunches(kernel)
    return kernel if getattr(_launches, "bare", False) else wrap_triton(kernel)


class InterpretedLaunches:
    """An interpreted kernel whose launches run one at a time in the process. Triton's interpreter
    patches ``triton.language`` for the length of each launch, for every thread: a second thread's
    launch meanwhile fails (``InterpreterError: Did you forget to add @triton.jit ?``)."""
    lock = threading.Lock()

    def __init__(self, kernel: Callable) -> None:
        self.kernel = kernel

    def __getitem__(self, grid) -> Callable:
        launch = self.kernel[grid]

        def launch_alone(*args, **kwargs):
            with self.lock:
                return launch(*args, **kwargs)
        return launch_alone


# The kernels' gradients are not differentiable again. A graph of them would lack this op's
# second-order terms, and a later gradient that does not pass through this op's node would be wrong
# without a word, so the first backward refuses to build one.
DOUBLE_BACKWARD_ERROR = (
    "restr_fast's Triton kernels have no second derivative: a gradient taken with create_graph=True "
    "(double backward, e.g. a gradient penalty) cannot pass through them; use the reference model "
    "with the math attention (fast=False, attention='math': SDPA's fused kernels have no second "
    "derivative either)")


def eager_autograd(forward: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """``forward`` with the backward of a registered op, as a ``torch.autograd.Function``.

    Eager calls go through this rather than through ``torch.ops``: torch.library's Python dispatch
    and autograd wrapper cost about 60 us a call on one CPU core (measured against 15 us for this
    Function), as long as a small kernel runs on a GPU. ``setup_context(ctx, inputs, output)`` and
    ``backward(ctx, *grads)`` are the ones registered with the op; gradients of unused outputs
    arrive as None, as they do there. Without gradients to track (``torch.no_grad``, inference),
    ``forward`` runs directly. Forward and backward launch their kernels under :class:`eager_launches`.
    A backward asked to build a graph of its gradients (``create_graph=True``) raises.
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
            if torch.is_grad_enabled():  # autograd asked for a graph of the gradients (create_graph=True)
                raise RuntimeError(DOUBLE_BACKWARD_ERROR)
            if all(grad is None for grad in grads):  # no gradient reached any output
                return (None,) * len(ctx.needs_input_grad)
            with eager_launches(device_of(grads)):  # autograd may run this on another thread
                return backward(ctx, *grads)

    def call(*inputs):
        with eager_launches(device_of(inputs)):
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
