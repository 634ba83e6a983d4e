"""The check a kernel variant passes on the card before a tuning tool times it: its outputs and
gradients against an fp64 reference, within the tolerance rule of DESIGN.md section 6, outputs
poisoned (NaN) first, so that a variant faster because it is wrong is never the one chosen.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator, NamedTuple, Sequence

import torch

Check = Callable[[], "str | None"]  # what is wrong with the kernels' results as they are now set, or None


class CheckedCase(NamedTuple):
    """One set of inputs a check runs the kernels on, and what their results are held to."""
    label: str  # what a failure's message starts with ("N=900 "), or ""
    results: Callable[[], list[torch.Tensor]]  # the kernels' outputs and gradients, as the kernels are set when called
    exact: list[torch.Tensor]  # the fp64 reference's, in the same order
    torch_errors: list[float]  # PyTorch's largest errors in the kernels' dtype, on each
    atols: list[float]  # the rule's absolute term, on each


def largest_error(values: torch.Tensor, exact: torch.Tensor) -> float:
    """max |values - exact| (NaN where ``values`` holds one)."""
    return (values.double() - exact).abs().max().item()


def rule_violation(name: str, ours: torch.Tensor, exact: torch.Tensor, torch_error: float, atol: float,
                   whose: str = "PyTorch's") -> str | None:
    """What breaks the tolerance rule of DESIGN.md section 6 (the largest error of ``ours`` against
    ``exact`` at most twice ``torch_error``, PyTorch's in the same dtype, plus ``atol``), or None. A NaN
    or a wrong shape breaks it. ``whose``: what the message calls ``torch_error``."""
    if ours.shape != exact.shape:
        return f"{name}: shape {tuple(ours.shape)}, expected {tuple(exact.shape)}"
    ours_error = largest_error(ours, exact)
    if ours_error <= 2 * torch_error + atol:
        return None
    return f"{name}: error {ours_error:.3g}, {whose} {torch_error:.3g}"


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """New tensors (the kernels' outputs) filled with NaN while the block runs, so that an element a
    variant leaves unwritten fails its check, rather than passing with what an earlier run left in
    the allocator's memory (PyTorch's deterministic mode fills them, warnings off)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    filled = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = filled
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def kernel_results(case: CheckedCase) -> list[torch.Tensor]:
    """The kernels' results on ``case``, as they are set now, outputs poisoned."""
    with poisoned_outputs():
        return case.results()


def first_violation(names: Sequence[str], case: CheckedCase, results: Sequence[torch.Tensor],
                    torch_errors: Sequence[float], whose: str = "PyTorch's") -> str | None:
    """What ``results`` on ``case`` break of the tolerance rule against ``torch_errors`` (``whose``
    errors they are), first output first, or None."""
    for name, values, exact, torch_error, atol in zip(names, results, case.exact, torch_errors, case.atols):
        problem = rule_violation(name, values, exact, torch_error, atol, whose)
        if problem is not None:
            return case.label + problem
    return None


def check_against_the_defaults(names: Sequence[str], cases: Sequence[CheckedCase]) -> Check:
    """A check of the kernels as they are set at each call, made while they are set to their defaults.

    Made, it runs the defaults on every case, prints whether they hold the tolerance rule against
    PyTorch, and records their errors. The check then holds each call's kernels within twice the
    larger of PyTorch's error and the defaults', plus the case's atol, on every output named in
    ``names``. A variant computes what the defaults do, in other tiles or another order, so its errors
    are theirs; against PyTorch alone, a chain of low-precision roundings (the decoder's four blocks)
    can leave both more than twice PyTorch's on some draws, where the GPU tests hold the defaults to the
    rule on theirs. A wrong variant (an unwritten element, a misplaced tile) is off by far more."""
    bounds, found = [], []
    for case in cases:
        defaults = kernel_results(case)
        errors = [largest_error(values, exact) for values, exact in zip(defaults, case.exact)]
        # (a NaN error of the defaults leaves PyTorch's: max keeps its first argument against NaN)
        bounds.append([max(torch_error, error) for torch_error, error in zip(case.torch_errors, errors)])
        problem = first_violation(names, case, defaults, case.torch_errors)
        if problem is not None:
            found.append(problem)
    print("the defaults against PyTorch: " + ("; ".join(found) if found else "within the tolerance rule on every "
                                              "output"), flush=True)

    def check() -> str | None:
        for case, case_bounds in zip(cases, bounds):
            problem = first_violation(names, case, kernel_results(case), case_bounds,
                                      "the larger of PyTorch's and the defaults'")
            if problem is not None:
                return problem
        return None
    return check
