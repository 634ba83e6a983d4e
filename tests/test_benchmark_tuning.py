"""The tuning tools' shared part (``benchmarks/tuning.py``): alternatives applied one at a time and
restored, checked before they are timed, failures reported, the table ordered by speed-up over the
defaults, the fastest variant chosen only when it beats the defaults and its results are right, and a
benchmark run with a variant applied and recorded."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package
from benchmarks import checks, tuning  # noqa: E402
from benchmarks.tuning import best_variant, print_fastest_first, replaced, time_variants, variant_named  # noqa: E402


def test_replacements_hold_inside_the_block_and_are_undone_after_an_error():
    module = SimpleNamespace(tile=16, warps=4)
    with pytest.raises(RuntimeError):
        with replaced([(module, "tile", 32), (module, "warps", 8)]):
            assert (module.tile, module.warps) == (32, 8)
            raise RuntimeError("a kernel failed")
    assert (module.tile, module.warps) == (16, 4)


def test_each_variant_is_timed_alone_and_a_failing_one_is_named(capsys):
    module = SimpleNamespace(tile=16)

    def measure():
        if module.tile == 0:
            raise ValueError("too many registers")
        return {"small": module.tile / 16, "large": module.tile / 8}
    results = time_variants([("tile 32", [(module, "tile", 32)]), ("tile 0", [(module, "tile", 0)]),
                             ("tile 8", [(module, "tile", 8)])], measure)
    assert results[0] == ("defaults", {"small": 1.0, "large": 2.0})
    assert results[1] == ("tile 32", {"small": 2.0, "large": 4.0})
    assert results[2][0] == "tile 0: ValueError: too many registers" and results[2][1]["small"] == float("inf")
    assert results[3][0] == "tile 8" and results[4] == ("defaults, measured again last", results[0][1])
    assert module.tile == 16
    progress = capsys.readouterr().out.splitlines()
    assert progress[0] == "defaults: {'small': 1.0, 'large': 2.0}" and len(progress) == 5
    assert progress[2].startswith("tile 0: ValueError: too many registers: ")

    print_fastest_first("title", results)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["title", "| variant | small | large | vs defaults |", "| --- | --- | --- | --- |"]
    assert [line.split(" | ")[0] for line in lines[3:]] == [
        "| tile 8", "| defaults", "| defaults, measured again last", "| tile 32",
        "| tile 0: ValueError: too many registers"]
    assert lines[3].endswith("| 2.00x |") and lines[5].endswith("| 1.00x |") and lines[6].endswith("| 0.50x |")
    assert lines[7].endswith("| 0.00x |")


def test_variants_past_the_deadline_are_left_out(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr(tuning.time, "monotonic", lambda: clock[0])

    def measure():
        clock[0] += 10.0  # each measurement takes 10 s
        return {"case": 1.0}
    variants = [(f"variant {k}", []) for k in range(4)]
    results = time_variants(variants, measure, deadline=125.0)  # the defaults end at 110, variants 0, 1 at 130
    assert [label for label, _ in results] == ["defaults", "variant 0", "variant 1", "defaults, measured again last"]
    assert "variant 2: not timed (--time-limit)" in capsys.readouterr().out
    monkeypatch.setattr(tuning, "process_age_s", lambda: 4.0)
    args = SimpleNamespace(time_limit=80.0, then_benchmark="x.json", benchmark_timeout=35.0)
    assert tuning.variants_deadline(args) == clock[0] - 4.0 + 80.0 - 35.0 - 10.0  # from the process's start
    assert tuning.variants_deadline(SimpleNamespace(time_limit=None)) is None


def test_a_variant_with_wrong_results_is_not_timed_and_never_chosen(capsys):
    module = SimpleNamespace(tile=16)
    checked = []

    def check():
        checked.append(module.tile)
        return "grad x: error nan, PyTorch's 0.01" if module.tile == 64 else None
    variants = [("tile 64", [(module, "tile", 64)]), ("tile 32", [(module, "tile", 32)])]
    results = time_variants(variants, lambda: {"case": 16 / module.tile}, check=check)
    assert checked == [64, 32]  # each variant with its replacements in place (the defaults: when the check is made)
    assert results[1] == ("tile 64: WrongResult: grad x: error nan, PyTorch's 0.01", {"case": float("inf")})
    assert best_variant(results)[0] == "tile 32"  # tile 64 would have been the fastest
    assert "tile 64: WrongResult: grad x: error nan" in capsys.readouterr().out


def test_the_tolerance_rule_and_what_breaks_it():
    exact = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    ours = torch.tensor([1.0, -2.0, 3.0 + 2 ** -6])
    assert checks.largest_error(ours, exact) == 2 ** -6
    assert checks.rule_violation("x", ours, exact, torch_error=2 ** -7, atol=0.0) is None  # twice PyTorch's
    assert checks.rule_violation("x", ours, exact, torch_error=2 ** -8, atol=2 ** -7) is None  # plus atol
    assert checks.rule_violation("x", ours, exact, torch_error=2 ** -8, atol=0.0) == (
        "x: error 0.0156, PyTorch's 0.00391")
    assert checks.rule_violation("x", torch.tensor([1.0, float("nan"), 3.0]), exact, 1.0, 1.0) == (
        "x: error nan, PyTorch's 1")
    assert checks.rule_violation("x", ours[:2], exact, 1.0, 1.0) == "x: shape (2,), expected (3,)"


def test_outputs_are_poisoned_inside_the_block_only():
    torch.use_deterministic_algorithms(False)
    with checks.poisoned_outputs():
        assert torch.empty(5).isnan().all() and torch.ones(3).new_empty(2).isnan().all()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # ops without a deterministic form still run
    assert not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with checks.poisoned_outputs():
            assert torch.empty(5).isnan().all()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = True
        torch.use_deterministic_algorithms(False)


LARGER = "the larger of PyTorch's and the defaults'"


def test_variants_are_held_to_the_larger_error_of_pytorchs_and_the_defaults(capsys):
    """The check made with the defaults: they are reported against PyTorch's error alone; a variant
    may be off by what the defaults are, not more, and a NaN or an error past both fails."""
    kernels = SimpleNamespace(offset=0.3)  # the defaults' error: 0.3, three times PyTorch's 0.1
    exact = [torch.zeros(3, dtype=torch.float64)]
    case = checks.CheckedCase("N=7 ", lambda: [torch.full((3,), kernels.offset)], exact, [0.1], [0.0])
    check = checks.check_against_the_defaults(["logits"], [case])
    assert capsys.readouterr().out == "the defaults against PyTorch: N=7 logits: error 0.3, PyTorch's 0.1\n"
    for offset, expected in ((0.3, None), (0.6, None), (0.61, f"N=7 logits: error 0.61, {LARGER} 0.3"),
                             (float("nan"), f"N=7 logits: error nan, {LARGER} 0.3")):
        kernels.offset = offset
        assert check() == expected
    kernels.offset = 0.05  # defaults within the rule: said so
    checks.check_against_the_defaults(["logits"], [case])
    assert capsys.readouterr().out == "the defaults against PyTorch: within the tolerance rule on every output\n"
    kernels.offset = float("nan")  # defaults that write NaN: the variants are held to PyTorch's error
    check = checks.check_against_the_defaults(["logits"], [case])
    assert capsys.readouterr().out == "the defaults against PyTorch: N=7 logits: error nan, PyTorch's 0.1\n"
    kernels.offset = 0.19
    assert check() is None
    kernels.offset = 0.21
    assert check() == f"N=7 logits: error 0.21, {LARGER} 0.1"


def test_the_kernels_run_with_their_outputs_poisoned():
    seen = []
    case = checks.CheckedCase("", lambda: seen.append(torch.empty(4).isnan().all().item()) or [torch.zeros(1)],
                              [torch.zeros(1, dtype=torch.float64)], [0.0], [0.0])
    torch.use_deterministic_algorithms(False)
    checks.check_against_the_defaults(["x"], [case])()
    assert seen == [True, True] and not torch.are_deterministic_algorithms_enabled()


def results_of(*variants, defaults=None, defaults_again=None):
    """time_variants' results: the defaults, the ``variants`` (label, times), the defaults again."""
    defaults = defaults or {"a": 10.0, "b": 20.0}
    return [("defaults", defaults), *variants, ("defaults, measured again last", defaults_again or defaults)]


def test_the_fastest_variant_is_chosen_only_when_it_gains_2_percent_and_loses_2_percent_nowhere():
    faster = ("faster", {"a": 9.0, "b": 18.0})  # 1.11x in both cases
    fastest_but_one_case_slower = ("mixed", {"a": 5.0, "b": 21.0})  # 1.38x geometric mean, b 5 % slower
    within_noise = ("within noise", {"a": 9.9, "b": 19.8})  # 1.01x
    failed = ("failed: ValueError: registers", {"a": float("inf"), "b": float("inf")})
    label, speedup = best_variant(results_of(within_noise, faster, fastest_but_one_case_slower, failed))
    assert label == "faster" and speedup == pytest.approx(10 / 9)
    assert best_variant(results_of(within_noise, fastest_but_one_case_slower, failed)) is None
    # against the faster of the two measurements of the defaults: a drift of the card is no gain
    assert best_variant(results_of(faster, defaults_again={"a": 8.5, "b": 17.0})) is None
    assert best_variant(results_of(("slow", {"a": 11.0, "b": 21.0}), ("fast", {"a": 8.0, "b": 16.0}),
                                   ("faster", {"a": 7.0, "b": 15.0})))[0] == "faster"


def test_a_variant_is_found_by_tool_and_label():
    from benchmarks import tune_decoder, tune_seed_mask

    for tool, module in (("decoder", tune_decoder), ("seed_mask", tune_seed_mask)):
        for label, replacements in module.variants():
            found = variant_named(f"{tool}:{label}")
            assert [r[:2] for r in found] == [r[:2] for r in replacements]
    with pytest.raises(ValueError, match="the tool must be one of decoder, seed_mask"):
        variant_named("attention:anything")
    with pytest.raises(ValueError, match="tune_decoder has no variant 'backward in 9 stages'; its variants: "
                                         "backward on column pairs; "):
        variant_named("decoder:backward in 9 stages")


def test_benchmark_runs_the_groups_cases_with_the_variant_and_a_budget_within_its_bound(monkeypatch, capsys,
                                                                                      tmp_path):
    calls = []
    json_path = tmp_path / "tuned.json"

    def run(command, cwd, env, timeout):
        calls.append((command, cwd, env, timeout))
        json_path.write_text("{}")  # as pytest-benchmark writes it at the end of the run
    monkeypatch.setattr(tuning.subprocess, "run", run)
    results = results_of(("backward in 2 pipeline stages", {"a": 9.0, "b": 18.0}))
    tuning.benchmark_fastest("decoder", results, str(json_path), timeout_s=50)
    (command, cwd, env, timeout), = calls
    assert command[1:] == ["-m", "pytest", "benchmarks/test_decoder.py", "--benchmark-only", "-q", "-p",
                           "no:cacheprovider", "-k", "not compile and not commuted", f"--benchmark-json={json_path}"]
    assert cwd == tuning.ROOT and (cwd / "benchmarks" / "test_decoder.py").is_file()
    assert env["RESTR_BENCH_VARIANT"] == "decoder:backward in 2 pipeline stages" and timeout == 50
    assert float(env["RESTR_BENCH_BUDGET_S"]) == 35  # cases past the budget skip, and the JSON is written
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("fastest variant: backward in 2 pipeline stages, 1.111x the defaults")
    assert out[-1] == f"benchmark with decoder:backward in 2 pipeline stages: {json_path} written"

    def overrun(command, cwd, env, timeout):  # killed before pytest-benchmark writes anything
        raise tuning.subprocess.TimeoutExpired(command, timeout)
    monkeypatch.setattr(tuning.subprocess, "run", overrun)
    tuning.benchmark_fastest("decoder", results, str(json_path), timeout_s=50)  # the earlier file is removed
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "the benchmark run passed its 50 s bound",
        f"benchmark with decoder:backward in 2 pipeline stages: {json_path} not written"]

    monkeypatch.setattr(tuning.subprocess, "run", run)
    calls.clear()
    tuning.benchmark_fastest("decoder", results_of(("within noise", {"a": 9.9, "b": 19.9})), str(json_path), 50)
    tuning.benchmark_fastest("decoder", results, None, 50)  # no JSON asked for
    assert calls == [] and f"no benchmark run with one, {json_path} not written" in capsys.readouterr().out


def test_the_benchmark_folder_holds_the_variant_while_its_cases_run(tmp_path):
    """The real path: ``benchmarks/``'s own conftest, under RESTR_BENCH_VARIANT, holds the variant
    from collection on and undoes it at the end, and BENCHMARK's ``-k`` keeps the eager and fast cases."""
    from benchmarks import tune_decoder

    (tmp_path / "variant_probe.py").write_text(
        "import importlib, json, os\n"
        "import pytest\n"
        "seen = {}\n"
        "def stages():\n"
        "    return importlib.import_module('restr_fast.kernels.decoder').BACKWARD_STAGES\n"
        "def pytest_collection_finish(session):\n"
        "    seen.update(collected=stages(), ids=[item.callspec.id for item in session.items])\n"
        "@pytest.hookimpl(trylast=True)\n"
        "def pytest_unconfigure(config):\n"
        "    seen['after'] = stages()\n"
        "    with open(os.environ['PROBE_OUT'], 'w') as file:\n"
        "        json.dump(seen, file)\n")
    test_file, keep = tune_decoder.BENCHMARK
    env = dict(os.environ, RESTR_BENCH_VARIANT="decoder:backward in 2 pipeline stages", PROBE_OUT=str(tmp_path / "seen"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "pytest", test_file, "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-p", "variant_probe", "-k", keep], cwd=tuning.ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads((tmp_path / "seen").read_text())
    assert seen["collected"] == 2 and seen["after"] == 1
    assert sorted(seen["ids"]) == sorted(f"{impl}-{case}" for impl in ("eager", "fast")
                                         for case in ("480/16", "480/8", "640/16"))


def test_a_benchmark_run_applies_the_named_variant_and_records_it(tmp_path):
    """A benchmark session under RESTR_BENCH_VARIANT holds the variant while it runs and names it in
    the JSON; an unknown one stops the run with the known labels."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import importlib\n"
        "def test_probe(benchmark):\n"
        "    stages = importlib.import_module('restr_fast.kernels.decoder').BACKWARD_STAGES\n"
        "    benchmark.extra_info['stages'] = stages\n"
        "    benchmark(lambda: None)\n")

    def run(variant):
        out = tmp_path / f"{len(variant)}.json"
        done = subprocess.run([sys.executable, "-m", "pytest", str(probe), "-p", "benchmarks.conftest", "-q",
                               "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "--benchmark-only",
                               f"--benchmark-json={out}"], cwd=tuning.ROOT, capture_output=True, text=True,
                              env=dict(os.environ, RESTR_BENCH_VARIANT=variant))
        return done, (json.loads(out.read_text()) if out.exists() else None)
    done, data = run("decoder:backward in 2 pipeline stages")
    assert done.returncode == 0, done.stdout + done.stderr
    assert data["benchmarks"][0]["extra_info"]["stages"] == 2
    assert data["machine_info"]["variant"] == "decoder:backward in 2 pipeline stages"
    done, data = run("decoder:no such variant")
    assert done.returncode != 0 and data is None
    assert "tune_decoder has no variant 'no such variant'" in done.stderr
