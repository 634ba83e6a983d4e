"""Markdown tables from a pytest-benchmark JSON: ``python -m benchmarks.report BENCH.json``.

Every number printed is read from the JSON (the ``extra_info`` that the suite wrote).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = [  # (extra_info key, header, format)
    ("median_ms", "median ms", "{:.3f}"),
    ("peak_memory_gb", "peak GB", "{:.2f}"),
    ("gb_per_s", "GB/s", "{:.0f}"),
    ("tflop_per_s", "TFLOP/s", "{:.3f}"),
    ("time_vs_copy_floor", "x copy floor", "{:.2f}"),
    ("speedup_vs_reference", "speed-up vs reference", "{:.2f}x"),
    ("speedup_vs_eager", "speed-up vs eager", "{:.2f}x"),
    ("speedup_vs_eager-sdpa", "speed-up vs eager-sdpa", "{:.2f}x"),
]


def machine_line(machine: dict) -> str:
    gpu = machine.get("gpu")
    card = (f"{gpu['name']} ({gpu.get('memory_gb', '?')} GB, driver {gpu.get('driver', '?')})" if gpu
            else f"CPU: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}")
    return (f"{card}; torch {machine.get('torch', '?')}, triton {machine.get('triton', '?')}, "
            f"torch CUDA build {machine.get('cuda') or 'none'}")


def render(data: dict) -> str:
    lines = [f"Machine: {machine_line(data.get('machine_info', {}))}"]
    commit = data.get("commit_info", {})
    if commit.get("id"):
        lines.append(f"Commit: {commit['id'][:12]}{' (dirty)' if commit.get('dirty') else ''}, "
                     f"{data.get('datetime', '')}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[bench.get("group") or "ungrouped"].append(bench)
    for group, benches in groups.items():
        keys = [c for c in COLUMNS if any(c[0] in b.get("extra_info", {}) for b in benches)]
        lines += ["", f"### {group}", "",
                  "| case | impl | " + " | ".join(header for _, header, _ in keys) + " |",
                  "| --- | --- |" + " --- |" * len(keys)]
        for bench in benches:
            info = bench.get("extra_info", {})
            cells = [fmt.format(info[key]) if key in info else "" for key, _, fmt in keys]
            lines.append(f"| {info.get('case', bench['name'])} | {info.get('impl', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json", type=Path, help="the file written by --benchmark-json")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"cannot read {args.json}: {error}", file=sys.stderr)
        return 2
    print(render(data), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
