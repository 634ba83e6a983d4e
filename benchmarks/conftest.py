"""Benchmark harness: synchronised GPU timing, peak memory, ratios to the baselines measured in the
same run, and the machine (GPU name, driver, memory, clocks, power) in the JSON.

Run: ``pytest benchmarks/ --benchmark-only`` (``-m kernels`` for the kernel groups alone).
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import pytest
import torch

from .tuning import VARIANT_ENV, process_age_s, replaced, variant_named

GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not GPU, reason="GPU benchmark group: needs a CUDA GPU")
cpu_only = pytest.mark.skipif(GPU, reason="CPU group: on a GPU machine the GPU groups measure this")

# Implementations compared within a group, baselines first; ratios are against these baselines.
BASELINES = ("reference", "eager", "eager-sdpa")


# The suite must end, and write its JSON, before the caller's time limit (../shared/gpu-check.sh
# gives it 240 s, counted from before Python starts). Cases that would overrun skip with a reason.
SESSION_START = time.monotonic() - process_age_s()  # when the process started: imports included
TIME_BUDGET_S = float(os.environ.get("RESTR_BENCH_BUDGET_S", "225"))

# Run order of the groups: the headline comparisons first, the optional ones last; items marked
# ``costly`` (whole-model torch.compile) after everything else, so a time-out loses only them.
GROUP_ORDER = ("seed_mask", "decoder", "attention", "train_step", "inference", "memory")
_VARIANT = pytest.StashKey[contextlib.ExitStack]()  # holds RESTR_BENCH_VARIANT's replacements during the run


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "costly: runs after every other benchmark, when the time budget allows it")
    spec = os.environ.get(VARIANT_ENV)
    if spec:  # a tuning tool's variant, applied for the whole run (benchmarks/tuning.py)
        try:
            replacements = variant_named(spec)
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
        config.stash[_VARIANT] = contextlib.ExitStack()
        config.stash[_VARIANT].enter_context(replaced(replacements))


def pytest_unconfigure(config) -> None:
    if _VARIANT in config.stash:
        config.stash[_VARIANT].close()


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> tuple[int, int]:
        marker = item.get_closest_marker("benchmark")
        group = marker.kwargs.get("group", "") if marker else ""
        position = GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
        return (item.get_closest_marker("costly") is not None, position)

    items.sort(key=rank)  # stable: the order inside a group (baselines first) is kept


def time_left() -> float:
    """Seconds left of the suite's time budget (``RESTR_BENCH_BUDGET_S``, default 225)."""
    return TIME_BUDGET_S - (time.monotonic() - SESSION_START)


def skip_unless_time(needed_s: float) -> None:
    """Skip the calling case, with the reason, when fewer than ``needed_s`` seconds of the budget remain."""
    left = time_left()
    if left < needed_s:
        pytest.skip(f"time budget: {left:.0f} s left of RESTR_BENCH_BUDGET_S={TIME_BUDGET_S:.0f}, "
                    f"this case needs about {needed_s:.0f} s")


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA allocation failure, whichever layer (allocator, cuBLAS, Triton) reported it."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def out_of_memory_reason(error: BaseException) -> str | None:
    """The skip reason for a CUDA allocation failure (its message's first line), else None."""
    if not is_out_of_memory(error):
        return None
    return f"out of memory on this card: {str(error).splitlines()[0] if str(error) else type(error).__name__}"


def release_memory() -> None:
    """Drop unreferenced tensors and hand cached GPU blocks back, so the next case starts clean."""
    gc.collect()
    if GPU:
        torch.cuda.empty_cache()


def synchronized_timer() -> float:
    """perf_counter after the GPU's queue has drained, so a timed region covers the GPU work."""
    if GPU:
        torch.cuda.synchronize()
    return time.perf_counter()


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    import triton
    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["cuda"] = torch.version.cuda
    machine_info["python"] = platform.python_version()
    if os.environ.get(VARIANT_ENV):
        machine_info["variant"] = os.environ[VARIANT_ENV]
    if GPU:
        machine_info["gpu"] = gpu_description()


def gpu_description() -> dict:
    """Name, driver, memory, clocks and power of GPU 0, read through nvidia-ml-py (NVML)."""
    description = {"name": torch.cuda.get_device_name(0),
                   "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)}
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        description.update(
            driver=_text(pynvml.nvmlSystemGetDriverVersion()),
            sm_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            max_sm_clock_mhz=pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            memory_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            power_w=pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
            power_limit_w=pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
        )
    except Exception as error:  # NVML missing or not permitted: keep what torch reports
        description["nvml_error"] = str(error)
    return description


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="session")
def baseline_times() -> dict:
    """Median seconds per call of the baselines measured so far: {(group, case): {impl: s}}."""
    return {}


@pytest.fixture(scope="session")
def copy_bandwidth() -> float:
    """:func:`measure_copy_bandwidth`, once a session."""
    return measure_copy_bandwidth()


def measure_copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy on this GPU (read + write)."""
    source = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    start = synchronized_timer()
    for _ in range(20):
        target.copy_(source)
    seconds = (synchronized_timer() - start) / 20
    return 2 * source.numel() / seconds


@pytest.fixture
def measure(benchmark, baseline_times):
    """measure(fn, impl=..., case=..., bytes_moved=None, flop=None, graph_calls=None) times ``fn``
    in the benchmark and returns its median seconds per call.

    Each round calls ``fn`` as often as fits about ``round_s`` seconds, between two synchronised
    timer reads, so small kernels are timed without the launch-and-sync overhead. Peak memory is
    measured in a separate call, after unreferenced tensors are collected; it includes what was
    live before the call (``live_before_gb``). ``extra_info`` gets the median per call, the peak
    memory, GB/s or TFLOP/s, and the ratio to each baseline measured earlier in the run for the
    same case.

    ``graph_calls`` (calls like ``fn`` on separate inputs) adds the GPU's own time per call, from a
    CUDA graph of them (:func:`graphed_gpu_seconds`): ``gpu_ms``, ``gpu_gb_per_s`` and
    ``gpu_speedup_vs_<baseline>``, or ``gpu_time_error``.
    """
    def run(fn: Callable[[], object], *, impl: str, case: str, bytes_moved: float | None = None,
            flop: float | None = None, rounds: int = 15, warmup: int = 2, round_s: float = 0.05,
            graph_calls: Sequence[Callable[[], object]] | None = None) -> float:
        for _ in range(warmup):
            fn()
        start = synchronized_timer()
        fn()
        single = synchronized_timer() - start
        calls = max(1, min(1000, math.ceil(round_s / max(single, 1e-7))))

        release_memory()  # garbage left by earlier cases (reference cycles) must not count in this one's peak
        live_before = torch.cuda.memory_allocated() if GPU else None
        peak = peak_memory(fn)
        benchmark._timer = synchronized_timer  # pytest-benchmark reads its timer from this attribute
        benchmark.pedantic(fn, rounds=rounds, iterations=calls, warmup_rounds=1)
        median = benchmark.stats.stats.median

        info = benchmark.extra_info
        info.update(impl=impl, case=case, median_ms=median * 1e3, calls_per_round=calls)
        if peak is not None:
            info["peak_memory_gb"] = peak / 1e9
            info["live_before_gb"] = live_before / 1e9  # part of the peak: inputs, weights, what earlier cases kept
        if bytes_moved is not None:
            info["gb_per_s"] = bytes_moved / median / 1e9
        if flop is not None:
            info["tflop_per_s"] = flop / median / 1e12
        _record_ratios(info, baseline_times.setdefault((benchmark.group, case), {}), impl, median, "")
        if graph_calls is not None:
            try:
                gpu = graphed_gpu_seconds(graph_calls)
            except Exception as error:  # a call that cannot be captured: say so, keep the wall-clock figures
                info["gpu_time_error"] = f"{type(error).__name__}: {error}"[:300]
            else:
                info["gpu_ms"] = gpu * 1e3
                if bytes_moved is not None:
                    info["gpu_gb_per_s"] = bytes_moved / gpu / 1e9
                _record_ratios(info, baseline_times.setdefault((benchmark.group, case, "gpu"), {}), impl, gpu, "gpu_")
        return median

    return run


def _record_ratios(info: dict, measured: dict, impl: str, seconds: float, prefix: str) -> None:
    """``{prefix}speedup_vs_<baseline>`` for each baseline in ``measured``; a baseline adds itself."""
    for baseline, baseline_seconds in measured.items():
        info[f"{prefix}speedup_vs_{baseline}"] = baseline_seconds / seconds
    if impl in BASELINES:
        measured[impl] = seconds


def graphed_gpu_seconds(calls: Sequence[Callable[[], object]], replays: int = 10) -> float:
    """Median GPU seconds per call of ``calls``, captured in order in one CUDA graph and replayed.

    A replay launches the whole graph at once, so this is the time the GPU spends on the calls'
    kernels (and the gaps between them), without the CPU's dispatch and launch cost that times a
    call of a few microseconds of GPU work. Give the calls separate inputs larger together than
    the L2 cache (see :func:`l2_rotation`), or the figure is the L2's bandwidth, not memory's.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, allocations) outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        # outputs kept alive: each call writes to its own memory, as it reads its own inputs, rather
        # than to blocks the allocator hands back at once, which would stay in L2
        outputs = [call() for call in calls]
    graph.replay()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()  # untimed: the timed replay's launch happens while the GPU runs this one, so the
        start.record()  # start event fires when this one ends, not before the host has launched the next
        graph.replay()
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3 / len(calls))
    del graph, outputs
    release_memory()
    return statistics.median(seconds)


def l2_rotation(bytes_per_call: float, at_least: int = 4) -> int:
    """How many calls, each reading and writing ``bytes_per_call`` of its own, a graph of calls
    takes so that together they touch three times the GPU's L2 cache: each call then reads from
    and writes to memory."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
    return max(at_least, math.ceil(3 * l2 / bytes_per_call))


def peak_memory(fn: Callable[[], object]) -> int | None:
    """The most GPU memory allocated during a call of ``fn`` (None without a GPU)."""
    if not GPU:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()
