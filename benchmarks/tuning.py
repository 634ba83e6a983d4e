"""Shared by the kernel tuning tools (``tune_decoder``, ``tune_seed_mask``): alternatives to a kernel
module's launch choices (tiles, warps, switches), applied one at a time, and the table of their
times against the defaults."""
from __future__ import annotations

import contextlib
import math
from types import ModuleType
from typing import Callable, Iterator, Sequence

Replacement = tuple[ModuleType, str, object]  # (module, launcher function or switch, replacement)
Variant = tuple[str, list[Replacement]]  # (label, replacements)
Times = dict[str, float]  # a time for each case measured, e.g. {"ms": 4.3}


@contextlib.contextmanager
def replaced(replacements: Sequence[Replacement]) -> Iterator[None]:
    """The replacements set on their modules while the block runs; the originals restored after."""
    originals = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    try:
        for module, name, replacement in replacements:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in reversed(originals):
            setattr(module, name, original)


def time_variants(variants: Sequence[Variant], measure: Callable[[], Times]) -> list[tuple[str, Times]]:
    """(label, times) of the defaults, of each variant, and of the defaults again, each also printed
    as it is measured. A variant a kernel cannot take (registers, shared memory) gets infinite
    times and the error in its label."""
    results = [("defaults", measure())]
    print(f"defaults: {results[0][1]}", flush=True)
    for label, replacements in variants:
        with replaced(replacements):
            try:
                results.append((label, measure()))
            except Exception as error:
                failed = {case: math.inf for case in results[0][1]}
                results.append((f"{label}: {type(error).__name__}: {str(error)[:120]}", failed))
        print(f"{results[-1][0]}: {results[-1][1]}", flush=True)  # kept if a time bound cuts the run
    results.append(("defaults, measured again last", measure()))  # shows the drift over the run
    print(f"{results[-1][0]}: {results[-1][1]}", flush=True)
    return results


def print_fastest_first(title: str, results: list[tuple[str, Times]]) -> None:
    """A markdown table of the times, fastest first by the geometric mean of the speed-ups over
    the defaults (the first result) across the cases."""
    defaults = results[0][1]

    def speedup(times: Times) -> float:
        return math.prod(defaults[case] / times[case] for case in defaults) ** (1 / len(defaults))
    print(title)
    print(f"| variant | {' | '.join(defaults)} | vs defaults |")
    print("| --- " * (len(defaults) + 2) + "|")
    for label, times in sorted(results, key=lambda result: -speedup(result[1])):
        print(f"| {label} | {' | '.join(f'{times[case]:.4g}' for case in defaults)} | {speedup(times):.2f}x |")
