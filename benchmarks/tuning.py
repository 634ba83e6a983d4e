"""Shared by the kernel tuning tools (``tune_decoder``, ``tune_seed_mask``): alternatives to a kernel
module's launch choices (tiles, warps, switches), applied one at a time, each checked on the card
before it is timed (:mod:`benchmarks.checks`), the table of their times against the defaults, and the
benchmark group's eager and fast cases run again with the fastest one.

A benchmark run applies one tool's variant throughout when ``RESTR_BENCH_VARIANT`` names it as
``tool:label`` (``decoder:backward in 2 pipeline stages``), and records it in the JSON's
``machine_info``: what the figures of a default not yet changed were measured with.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Sequence

from .checks import Check

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


def process_age_s() -> float:
    """Seconds since this process started (Linux's /proc; 0 elsewhere)."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime_s - int(after_name[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time
    except (OSError, ValueError, IndexError):
        return 0.0


class WrongResult(Exception):
    """A variant's results break the tolerance rule against the reference."""


def time_variants(variants: Sequence[Variant], measure: Callable[[], Times],
                  deadline: float | None = None, check: Check | None = None) -> list[tuple[str, Times]]:
    """(label, times) of the defaults, of each variant, and of the defaults again, each also printed
    as it is measured. A variant a kernel cannot take (registers, shared memory), or whose results
    ``check`` finds wrong before it is timed, gets infinite times and the error in its label, so that
    :func:`best_variant` never picks it (the defaults are the baseline: a check made with them reports
    them, :func:`benchmarks.checks.check_against_the_defaults`). Past ``deadline``
    (``time.monotonic()``), the variants left are not timed (said so, and not in the results)."""
    results = [("defaults", measure())]
    print(f"defaults: {results[0][1]}", flush=True)
    for label, replacements in variants:
        if deadline is not None and time.monotonic() > deadline:
            print(f"{label}: not timed (--time-limit)", flush=True)
            continue
        with replaced(replacements):
            try:
                problem = check() if check is not None else None
                if problem is not None:
                    raise WrongResult(problem)
                results.append((label, measure()))
            except Exception as error:
                failed = {case: math.inf for case in results[0][1]}
                results.append((f"{label}: {type(error).__name__}: {str(error)[:120]}", failed))
        print(f"{results[-1][0]}: {results[-1][1]}", flush=True)  # kept if a time bound cuts the run
    results.append(("defaults, measured again last", measure()))  # shows the drift over the run
    print(f"{results[-1][0]}: {results[-1][1]}", flush=True)
    return results


def geometric_mean_speedup(defaults: Times, times: Times) -> float:
    """The geometric mean over the cases of ``defaults[case] / times[case]``."""
    return math.prod(defaults[case] / times[case] for case in defaults) ** (1 / len(defaults))


def print_fastest_first(title: str, results: list[tuple[str, Times]]) -> None:
    """A markdown table of the times, fastest first by the geometric mean of the speed-ups over
    the defaults (the first result) across the cases."""
    defaults = results[0][1]
    print(title)
    print(f"| variant | {' | '.join(defaults)} | vs defaults |")
    print("| --- " * (len(defaults) + 2) + "|")
    for label, times in sorted(results, key=lambda result: -geometric_mean_speedup(defaults, result[1])):
        print(f"| {label} | {' | '.join(f'{times[case]:.4g}' for case in defaults)} | "
              f"{geometric_mean_speedup(defaults, times):.2f}x |")


def best_variant(results: list[tuple[str, Times]], margin: float = MARGIN) -> tuple[str, float] | None:
    """(label, geometric-mean speed-up) of the fastest variant, if it gains at least ``margin`` over
    the defaults and loses more than ``margin`` in no case; else None (the defaults stay). Against the
    faster of the two measurements of the defaults, the first result and the last, which discounts
    a drift of the card over the run (the table compares with the first alone). ``results``: as
    :func:`time_variants` returns them."""
    first, last = results[0][1], results[-1][1]
    defaults = {case: min(first[case], last[case]) for case in first}
    qualified = {label: geometric_mean_speedup(defaults, times) for label, times in results[1:-1]
                 if geometric_mean_speedup(defaults, times) >= margin
                 and all(defaults[case] / times[case] >= 1 / margin for case in defaults)}
    label = max(qualified, key=qualified.get, default=None)
    return None if label is None else (label, qualified[label])


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


def benchmark_with(tool: str, label: str, json_path: str, timeout_s: float) -> bool:
    """Run the cases of ``tool``'s benchmark group that its targets need (``BENCHMARK`` of
    ``benchmarks.tune_<tool>``: the test file and a ``-k`` expression) in a new process with the
    variant ``label`` applied and a time budget (``RESTR_BENCH_BUDGET_S``) 15 s under ``timeout_s``,
    so that cases beyond it skip and the JSON is written; returns whether ``json_path`` was."""
    test_file, keep = importlib.import_module(f"benchmarks.tune_{tool}").BENCHMARK
    json_path = os.path.abspath(json_path)
    command = [sys.executable, "-m", "pytest", test_file, "--benchmark-only", "-q", "-p", "no:cacheprovider",
               "-k", keep, f"--benchmark-json={json_path}"]
    variables = {VARIANT_ENV: f"{tool}:{label}", "RESTR_BENCH_BUDGET_S": str(max(0.0, timeout_s - 15))}
    print(" ".join(f"{name}={shlex.quote(value)}" for name, value in variables.items()), shlex.join(command), flush=True)
    if os.path.exists(json_path):
        os.remove(json_path)  # a file left from an earlier run must not pass for this one's
    try:
        subprocess.run(command, cwd=ROOT, env=dict(os.environ, **variables), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"the benchmark run passed its {timeout_s:.0f} s bound", flush=True)
    return os.path.exists(json_path)


def add_benchmark_arguments(parser: argparse.ArgumentParser, tool: str, timeout_s: float) -> None:
    """``--then-benchmark JSON`` and ``--benchmark-timeout`` for ``tool``'s tuning command line,
    the arguments of :func:`benchmark_fastest`."""
    parser.add_argument("--then-benchmark", metavar="JSON",
                        help=f"run the {tool} benchmark group's eager and fast cases with the fastest variant, "
                             "if one beats the defaults, into JSON")
    parser.add_argument("--benchmark-timeout", type=float, default=timeout_s,
                        help=f"time bound of that benchmark run, in seconds (default {timeout_s:g})")
    parser.add_argument("--time-limit", type=float,
                        help="the time bound the whole command runs under, in seconds: no variant is timed once "
                             "too little of it is left for the defaults' second measurement and the benchmark run")


def variants_deadline(args: argparse.Namespace, reserve_s: float = 10.0) -> float | None:
    """The ``time.monotonic()`` after which no variant is timed: ``--time-limit`` after the process
    started, less the benchmark run's bound (with ``--then-benchmark``) and ``reserve_s`` for the
    defaults' second measurement and the table; None without ``--time-limit``."""
    if args.time_limit is None:
        return None
    started = time.monotonic() - process_age_s()
    return started + args.time_limit - (args.benchmark_timeout if args.then_benchmark else 0.0) - reserve_s


def benchmark_fastest(tool: str, results: list[tuple[str, Times]], json_path: str | None, timeout_s: float) -> None:
    """With ``json_path``, run the benchmark cases again with :func:`best_variant` of ``results``
    applied (:func:`benchmark_with`), or say that the defaults stay."""
    if json_path is None:
        return
    best = best_variant(results)
    percent = round(100 * (MARGIN - 1))
    if best is None:
        print(f"no variant was {percent} % faster than the defaults with no case {percent} % slower: no benchmark "
              f"run with one, {json_path} not written", flush=True)
        return
    label, speedup = best
    print(f"fastest variant: {label}, {speedup:.3f}x the defaults (geometric mean over the cases, against the "
          "faster of the two measurements of the defaults)", flush=True)
    written = benchmark_with(tool, label, json_path, timeout_s)
    print(f"benchmark with {tool}:{label}: {json_path} {'written' if written else 'not written'}", flush=True)
