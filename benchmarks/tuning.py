"""Shared by the kernel tuning tools (``tune_decoder``, ``tune_seed_mask``): alternatives to a kernel
module's launch choices (tiles, warps, switches), applied one at a time, the table of their times
against the defaults, and the benchmark group run again with the fastest one.

A benchmark run applies one tool's variant throughout when ``RESTR_BENCH_VARIANT`` names it as
``tool:label`` (``decoder:backward in 2 pipeline stages``), and records it in the JSON's
``machine_info``: what the figures of a default not yet changed were measured with.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Sequence

Replacement = tuple[ModuleType, str, object]  # (module, launcher function or switch, replacement)
Variant = tuple[str, list[Replacement]]  # (label, replacements)
Times = dict[str, float]  # a time for each case measured, e.g. {"ms": 4.3}

VARIANT_ENV = "RESTR_BENCH_VARIANT"
TOOLS = ("decoder", "seed_mask")  # benchmarks.tune_<tool>, each with variants() and BENCHMARK
MARGIN = 1.02  # what a variant must gain over the defaults, and may lose in no case, to be benchmarked
ROOT = Path(__file__).resolve().parents[1]


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


def _speedups(results: list[tuple[str, Times]]) -> dict[str, dict[str, float]]:
    """Each variant's speed-up per case over the faster of the two measurements of the defaults
    (the first result and the last), which discounts a drift of the card over the run."""
    first, last = results[0][1], results[-1][1]
    defaults = {case: min(first[case], last.get(case, first[case])) for case in first}
    return {label: {case: defaults[case] / times[case] for case in defaults}
            for label, times in results[1:-1]}


def best_variant(results: list[tuple[str, Times]], margin: float = MARGIN) -> str | None:
    """The label of the variant with the highest geometric-mean speed-up over the defaults, if that
    is at least ``margin`` and no case is slower by more than ``margin``; else None (the defaults
    stay). ``results``: as :func:`time_variants` returns them."""
    def geometric_mean(speedups: dict[str, float]) -> float:
        return math.prod(speedups.values()) ** (1 / len(speedups))
    qualified = {label: geometric_mean(speedups) for label, speedups in _speedups(results).items()
                 if geometric_mean(speedups) >= margin and min(speedups.values()) >= 1 / margin}
    return max(qualified, key=qualified.get, default=None)


def variant_named(spec: str) -> list[Replacement]:
    """The replacements of ``tool:label``, a variant of ``benchmarks.tune_<tool>``; a clear error
    for an unknown tool or label, listing the known ones."""
    tool, _, label = spec.partition(":")
    if tool not in TOOLS:
        raise ValueError(f"{VARIANT_ENV}={spec!r}: the tool must be one of {', '.join(TOOLS)}, as in 'decoder:<label>'")
    found = dict(importlib.import_module(f"benchmarks.tune_{tool}").variants())
    if label not in found:
        raise ValueError(f"{VARIANT_ENV}={spec!r}: tune_{tool} has no variant {label!r}; its variants: "
                         + "; ".join(found))
    return found[label]


def benchmark_with(tool: str, label: str, json_path: str, timeout_s: float) -> int:
    """Run ``tool``'s benchmark group (``BENCHMARK`` of ``benchmarks.tune_<tool>``: its test file and
    the ``-k`` expression keeping the cases the targets need) in a new process with the variant
    ``label`` applied, writing ``json_path``; returns pytest's exit status (124 if it timed out)."""
    test_file, keep = importlib.import_module(f"benchmarks.tune_{tool}").BENCHMARK
    command = [sys.executable, "-m", "pytest", test_file, "--benchmark-only", "-q", "-p", "no:cacheprovider",
               "-k", keep, f"--benchmark-json={os.path.abspath(json_path)}"]
    print(f"benchmarking with {tool}:{label}: {' '.join(command)}", flush=True)
    try:
        return subprocess.run(command, cwd=ROOT, env=dict(os.environ, **{VARIANT_ENV: f"{tool}:{label}"}),
                              timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"the benchmark run passed its {timeout_s:.0f} s bound", flush=True)
        return 124


def benchmark_fastest(tool: str, results: list[tuple[str, Times]], json_path: str | None, timeout_s: float) -> None:
    """With ``json_path``, run the benchmark group again with :func:`best_variant` of ``results``
    applied (:func:`benchmark_with`), or say that the defaults stay."""
    if json_path is None:
        return
    label = best_variant(results)
    if label is None:
        percent = round(100 * (MARGIN - 1))
        print(f"no variant was {percent} % faster than the defaults with no case {percent} % slower: no benchmark "
              f"run with one, {json_path} not written", flush=True)
        return
    status = benchmark_with(tool, label, json_path, timeout_s)
    print(f"benchmark with {tool}:{label}: exit status {status}, results in {json_path}", flush=True)
