"""Markdown tables and PNG charts from a pytest-benchmark JSON:
``python -m benchmarks.report BENCH.json [--out DIR]``.

Every number printed is read from the JSON (the ``extra_info`` that the suite wrote); the targets of
the issues are checked against those numbers and reported as met or not met. The charts (speed-up
bars per group, peak memory against image size per patch size) go next to the JSON or to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

from . import figures
from .cases import DECODER_CASES, SEED_MASK_CASES

COLUMNS = [  # (extra_info key, header, format)
    ("median_ms", "median ms", "{:.3f}"),
    ("images_per_s", "img/s", "{:.1f}"),
    ("peak_memory_gb", "peak GB", "{:.2f}"),
    ("live_before_gb", "live GB before", "{:.2f}"),
    ("gb_per_s", "GB/s", "{:.0f}"),
    ("tflop_per_s", "TFLOP/s", "{:.3f}"),
    ("gpu_ms", "GPU ms (graph)", "{:.4f}"),
    ("gpu_gb_per_s", "GPU GB/s", "{:.0f}"),
    ("time_vs_copy_floor", "GPU time x copy floor", "{:.2f}"),
    ("same_size_copy_ms", "same-size copy GPU ms", "{:.4f}"),
    ("time_vs_same_size_copy", "GPU time x same-size copy", "{:.2f}"),
    ("backend", "backend", "{}"),
    ("speedup_vs_reference", "speed-up vs reference", "{:.2f}x"),
    ("speedup_vs_eager", "speed-up vs eager", "{:.2f}x"),
    ("speedup_vs_eager-sdpa", "speed-up vs eager-sdpa", "{:.2f}x"),
    ("speedup_vs_separate-calls", "speed-up vs separate calls", "{:.2f}x"),
    ("gpu_speedup_vs_eager", "GPU-time speed-up vs eager", "{:.2f}x"),
    ("gpu_time_error", "GPU time not measured", "{}"),
    ("same_size_copy_error", "same-size copy not measured", "{}"),
]
SPEEDUP_BASELINES = ("reference", "eager", "eager-sdpa", "separate-calls")  # a case's bars are against the first present
MEMORY_GROUP = "memory"
BUDGETS_GB = (24, 40, 80)


def group_rows(data: dict) -> dict[str, list[dict]]:
    """Each group's ``extra_info`` dicts, in the order the suite ran them (the case's name if none)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        info = dict(bench.get("extra_info", {}))
        info.setdefault("case", bench.get("name", "?"))
        info.setdefault("impl", "")
        groups[bench.get("group") or "ungrouped"].append(info)
    return dict(groups)


def find(groups: dict[str, list[dict]], group: str, case: str, impl: str) -> dict | None:
    """The row of ``impl`` in ``case`` of ``group``, or None."""
    return next((r for r in groups.get(group, []) if r["case"] == case and r["impl"] == impl), None)


# ---- targets -------------------------------------------------------------------------------------------

Check = Callable[[dict], tuple[str, bool | None]]  # groups -> (measured, met; None: not measured)


def at_least(group: str, case: str, impl: str, key: str, threshold: float) -> Check:
    def check(groups):
        row = find(groups, group, case, impl)
        if row is None or key not in row:
            return "", None
        return f"{row[key]:.2f}x", row[key] >= threshold
    return check


def memory_ratio(group: str, numerator: tuple[str, str], denominator: tuple[str, str], at_most: float) -> Check:
    """peak memory of (case, impl) / peak memory of (case, impl) <= at_most."""
    def check(groups):
        top, bottom = find(groups, group, *numerator), find(groups, group, *denominator)
        if not top or not bottom or "peak_memory_gb" not in top or "peak_memory_gb" not in bottom:
            return "", None
        ratio = top["peak_memory_gb"] / bottom["peak_memory_gb"]
        return (f"{ratio:.2f} ({top['peak_memory_gb']:.2f} / {bottom['peak_memory_gb']:.2f} GB)",
                ratio <= at_most)
    return check


def worst_case(group: str, cases: tuple[str, ...], impl: str, measure: Callable[[dict, list[dict]], float | None],
               at_least: float | None = None, at_most: float | None = None, fmt: str = "{:.2f}x") -> Check:
    """Over ``cases`` of ``group`` (and any other case a row names), ``measure(row of impl, rows of the
    case)``, and the worst value (the lowest against ``at_least``, the highest against ``at_most``):
    met when every case has a value within the bound; not met when one is outside it; not measured
    otherwise (a case without ``impl``'s row, or without the value: skipped, out of time, or its timing
    failed)."""
    def check(groups):
        rows = groups.get(group, [])
        values, missing = [], []
        for case in dict.fromkeys([*cases, *(row["case"] for row in rows)]):
            case_rows = [r for r in rows if r["case"] == case]
            row = next((r for r in case_rows if r["impl"] == impl), None)
            value = None if row is None else measure(row, case_rows)
            if value is None:
                missing.append(case)
            else:
                values.append((value, case))
        if not values:
            return "", None
        unmeasured = f"; not measured: {', '.join(missing)}" if missing else ""
        value, case = min(values) if at_least is not None else max(values)
        if not (value >= at_least if at_least is not None else value <= at_most):
            return f"{fmt.format(value)} (worst: {case}){unmeasured}", False
        if missing:
            return f"met in {len(values)} of {len(values) + len(missing)} cases{unmeasured}", None
        return f"all {len(values)} cases", True
    return check


def _key(key: str) -> Callable[[dict, list[dict]], float | None]:
    return lambda row, case_rows: row.get(key)


def _memory_saving_vs(baseline: str) -> Callable[[dict, list[dict]], float | None]:
    def saving(row, case_rows):
        base = next((r for r in case_rows if r["impl"] == baseline and "peak_memory_gb" in r), None)
        if base is None or "peak_memory_gb" not in row:
            return None
        return base["peak_memory_gb"] / row["peak_memory_gb"]
    return saving


TRAIN, INFER = "train_step", "inference"
TARGETS: list[tuple[str, str, Check]] = [  # (issue, target, check)
    ("#7", "train 480/16: fast >= 2.5x the images/s of eager-sdpa",
     at_least(TRAIN, "480-p16-b8", "fast", "speedup_vs_eager-sdpa", 2.5)),
    ("#7", "train 480/16: fast peak memory <= 0.6x eager-sdpa's",
     memory_ratio(TRAIN, ("480-p16-b8", "fast"), ("480-p16-b8", "eager-sdpa"), 0.6)),
    ("#7", "train 480/8 with fast fits in reference's peak memory at 480/16",
     memory_ratio(TRAIN, ("480-p8-b8", "fast"), ("480-p16-b8", "reference"), 1.0)),
    ("#7", "train 640/16 with fast fits in eager-sdpa's peak memory at 480/16",
     memory_ratio(TRAIN, ("640-p16-b8", "fast"), ("480-p16-b8", "eager-sdpa"), 1.0)),
    ("#7, #6", "inference batch 32: fast >= 2x the images/s of eager (eager-sdpa)",
     at_least(INFER, "480-p16-b32", "fast", "speedup_vs_eager-sdpa", 2.0)),
    ("#7, #6", "inference batch 1: fast latency <= 1/3 of eager (eager-sdpa)",
     at_least(INFER, "480-p16-b1", "fast", "speedup_vs_eager-sdpa", 3.0)),
    ("#7, #6", "inference batch 32: fast-graphs (CUDA graph replay) >= 2x the images/s of eager-sdpa",
     at_least(INFER, "480-p16-b32", "fast-graphs", "speedup_vs_eager-sdpa", 2.0)),
    ("#7, #6", "inference batch 1: fast-graphs (CUDA graph replay) latency <= 1/3 of eager-sdpa",
     at_least(INFER, "480-p16-b1", "fast-graphs", "speedup_vs_eager-sdpa", 3.0)),
    ("#6", "Predictor: one image with 8 sentences >= 4x faster than 8 calls",
     at_least(INFER, "1 image x 8 sentences", "one-call", "speedup_vs_separate-calls", 4.0)),
    ("#3", "seed_mask: fast >= 3x eager (wall-clock per call), every case",
     worst_case("seed_mask", SEED_MASK_CASES, "fast", _key("speedup_vs_eager"), at_least=3.0, fmt="{:.2f}x")),
    ("#3", "seed_mask: fast >= 3x eager (GPU time, CUDA-graph replay), every case",
     worst_case("seed_mask", SEED_MASK_CASES, "fast", _key("gpu_speedup_vs_eager"), at_least=3.0, fmt="{:.2f}x")),
    ("#3", "seed_mask: fast's GPU time within 1.3x of the copy-bandwidth floor, every case",
     worst_case("seed_mask", SEED_MASK_CASES, "fast", _key("time_vs_copy_floor"), at_most=1.3, fmt="{:.2f}x")),
    ("#4", "decoder: fast >= 8x eager (wall-clock per call), every case",
     worst_case("decoder", DECODER_CASES, "fast", _key("speedup_vs_eager"), at_least=8.0, fmt="{:.2f}x")),
    ("#4", "decoder: fast >= 8x eager (GPU time, CUDA-graph replay), every case",
     worst_case("decoder", DECODER_CASES, "fast", _key("gpu_speedup_vs_eager"), at_least=8.0, fmt="{:.2f}x")),
    ("#4", "decoder: fast peak memory >= 3x less than eager's, every case",
     worst_case("decoder", DECODER_CASES, "fast", _memory_saving_vs("eager"), at_least=3.0, fmt="{:.2f}x less")),
]


def render_targets(groups: dict[str, list[dict]]) -> list[str]:
    lines = ["## Targets", "", "| issue | target | measured | status |", "| --- | --- | --- | --- |"]
    for issue, target, check in TARGETS:
        measured, met = check(groups)
        status = "not measured" if met is None else "met" if met else "not met"
        lines.append(f"| {issue} | {target} | {measured} | {status} |")
    return lines


# ---- tables --------------------------------------------------------------------------------------------

def render_group(group: str, rows: list[dict]) -> list[str]:
    keys = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = [f"### {group}", "", "| case | impl | " + " | ".join(header for _, header, _ in keys) + " |",
             "| --- | --- |" + " --- |" * len(keys)]
    for row in rows:
        cells = [table_cell(fmt.format(row[key])) if key in row else "" for key, _, fmt in keys]
        lines.append(f"| {row['case']} | {row['impl']} | " + " | ".join(cells) + " |")
    return lines


def table_cell(text: str) -> str:
    """``text`` on one line, its pipes escaped: an error message as one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def memory_table(rows: list[dict]) -> dict[int, dict[str, dict[int, dict]]]:
    """{patch size: {impl: {image size: row}}}, from the memory group's rows."""
    table: dict[int, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        if "patch_size" in row and "image_size" in row:
            table[row["patch_size"]][row["impl"]][row["image_size"]] = row
    return table


def memory_cell(row: dict | None) -> str:
    if row is None:
        return ""
    return "OOM" if row.get("oom") else f"{row['peak_memory_gb']:.2f}"


def render_memory(rows: list[dict], card_gb: float | None) -> list[str]:
    table = memory_table(rows)
    sizes = sorted({size for impls in table.values() for by_size in impls.values() for size in by_size})
    lines = [f"### {MEMORY_GROUP}: peak GB of one batch-8 training step (OOM: out of memory)", "",
             "| patch | impl | " + " | ".join(str(s) for s in sizes) + " |", "| --- | --- |" + " --- |" * len(sizes)]
    for patch in sorted(table, reverse=True):
        for impl, by_size in table[patch].items():
            lines.append(f"| {patch} | {impl} | " + " | ".join(memory_cell(by_size.get(s)) for s in sizes) + " |")
    budgets = ([(f"{card_gb:g} GB (this card)", card_gb)] if card_gb else []) + [(f"{gb} GB", gb) for gb in BUDGETS_GB]
    patches = sorted(table, reverse=True)
    lines += ["", "Largest image size each trains at batch 8 within a memory budget (of the sizes measured; "
              "peak memory allocated by PyTorch):", "",
              "| budget | impl | " + " | ".join(f"patch {p}" for p in patches) + " |",
              "| --- | --- |" + " --- |" * len(patches)]
    impls = list(dict.fromkeys(impl for p in patches for impl in table[p]))
    for name, gb in budgets:
        for impl in impls:
            cells = [largest_within(table[p].get(impl, {}), gb) for p in patches]
            lines.append(f"| {name} | {impl} | " + " | ".join(cells) + " |")
    return lines


def largest_within(by_size: dict[int, dict], budget_gb: float) -> str:
    fitting = [(size, row["peak_memory_gb"]) for size, row in by_size.items()
               if not row.get("oom") and row.get("peak_memory_gb", float("inf")) <= budget_gb]
    if not fitting:
        return "none"
    size, gb = max(fitting)
    return f"{size} ({gb:.2f} GB)"


# ---- charts --------------------------------------------------------------------------------------------

def speedup_series(rows: list[dict]) -> tuple[list[str], dict[str, list[float | None]]]:
    """Cases (labelled with their baseline) and, per impl, the speed-up against the case's baseline."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    labels, series = [], {impl: [] for impl in impls}
    for case in cases:
        present = {r["impl"]: r for r in rows if r["case"] == case}
        baseline = next((b for b in SPEEDUP_BASELINES
                         if b in present or any(f"speedup_vs_{b}" in r for r in present.values())), None)
        if baseline is None:  # a case without a baseline has no speed-ups
            continue
        labels.append(f"{case}\nvs {baseline}")
        for impl in impls:
            row = present.get(impl)
            series[impl].append(None if row is None else 1.0 if impl == baseline
                                else row.get(f"speedup_vs_{baseline}"))
    return labels, series


def memory_point(row: dict | None) -> float | None:
    """A memory chart's value: peak GB, inf for out of memory, None where not measured."""
    if row is None:
        return None
    return float("inf") if row.get("oom") else row.get("peak_memory_gb")


def write_charts(groups: dict[str, list[dict]], out: Path, card_gb: float | None) -> list[Path]:
    """Speed-up bars per group that has ratios; memory against image size per patch size. Returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for group, rows in groups.items():
        labels, series = speedup_series(rows)
        series = {impl: values for impl, values in series.items() if any(v is not None for v in values)}
        if group == MEMORY_GROUP or not series:
            continue
        path = out / f"{group}-speedup.png"
        figures.speedup_bars(f"{group}: speed-up against the case's baseline (higher is better)", labels, series, path)
        written.append(path)
    table = memory_table(groups.get(MEMORY_GROUP, []))
    for patch, impls in sorted(table.items(), reverse=True):
        sizes = sorted({size for by_size in impls.values() for size in by_size})
        series = {impl: [memory_point(by_size.get(s)) for s in sizes] for impl, by_size in impls.items()}
        path = out / f"memory-p{patch}.png"
        figures.memory_lines(f"peak memory of a batch-8 training step, patch {patch}", sizes, series, path,
                             limits={"card": card_gb} if card_gb else None)
        written.append(path)
    return written


# ---- the report ----------------------------------------------------------------------------------------

def machine_line(machine: dict) -> str:
    gpu = machine.get("gpu")
    card = (f"{gpu['name']} ({gpu.get('memory_gb', '?')} GB, driver {gpu.get('driver', '?')})" if gpu
            else f"CPU: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}")
    variant = f"; with the tuning variant {machine['variant']}, not the defaults" if machine.get("variant") else ""
    return (f"{card}; torch {machine.get('torch', '?')}, triton {machine.get('triton', '?')}, "
            f"torch CUDA build {machine.get('cuda') or 'none'}{variant}")


def render(data: dict, charts: list[Path] = ()) -> str:
    """The markdown report of ``data``; ``charts`` are linked by file name at the end."""
    groups = group_rows(data)
    card_gb = (data.get("machine_info", {}).get("gpu") or {}).get("memory_gb")
    lines = [f"Machine: {machine_line(data.get('machine_info', {}))}"]
    commit = data.get("commit_info", {})
    if commit.get("id"):
        lines.append(f"Commit: {commit['id'][:12]}{' (dirty)' if commit.get('dirty') else ''}, "
                     f"{data.get('datetime', '')}")
    lines += [""] + render_targets(groups)
    for group, rows in groups.items():
        lines += [""] + (render_memory(rows, card_gb) if group == MEMORY_GROUP else render_group(group, rows))
    if charts:
        lines += ["", "## Charts", ""] + [f"![{path.stem}]({path.name})" for path in charts]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="the file written by --benchmark-json")
    parser.add_argument("--out", type=Path, help="folder for the PNG charts (default: the JSON's folder)")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"cannot read {args.json}: {error}", file=sys.stderr)
        return 2
    charts = write_charts(group_rows(data), args.out or args.json.parent,
                          (data.get("machine_info", {}).get("gpu") or {}).get("memory_gb"))
    print(render(data, charts), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
