"""Every alternative ``python -m benchmarks.tune_seed_mask`` times computes the same op, so that
whichever a GPU session finds fastest can become the default as it is."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from restr_fast.kernels import seed_mask
from restr_fast.kernels.seed_mask import seed_mask_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not an installed package
from benchmarks.tune_seed_mask import variants  # noqa: E402
from benchmarks.tuning import replaced  # noqa: E402

seed_mask_module = importlib.import_module("restr_fast.kernels.seed_mask")
VARIANTS = variants()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU, the kernels the tool times


@pytest.mark.parametrize("label, replacements", VARIANTS, ids=[label for label, _ in VARIANTS])
def test_variant_matches_the_reference_fp32(label, replacements, assert_within_rule):
    generator = torch.Generator().manual_seed(len(label))
    B, N, D, DP = 2, 37, 300, 24
    patches, classifier, bias, prefix = (torch.randn(*shape, generator=generator)
                                         for shape in ((B, N, D), (B, D), (B,), (B, N, DP)))
    grad_logits, grad_out = torch.randn(B, N, generator=generator), torch.randn(B, N, DP + D, generator=generator)

    def outputs_and_grads(fn, dtype):
        leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (patches, classifier, bias, prefix)]
        logits, out = fn(*leaves)
        grads = torch.autograd.grad([logits, out], leaves, [grad_logits.to(DEVICE, dtype), grad_out.to(DEVICE, dtype)])
        return [logits.detach(), out.detach(), *grads]

    def reference(patches, classifier, bias, prefix):
        logits, masked = seed_mask_reference(patches, classifier, bias)
        return logits, torch.cat([prefix, masked], dim=-1)

    exact = outputs_and_grads(reference, torch.float64)
    theirs = outputs_and_grads(reference, torch.float32)
    with replaced(replacements):
        ours = outputs_and_grads(lambda z, c, b, p: seed_mask(z, c, bias=b, prefix=p), torch.float32)
    names = ("logits", "decoder input", "grad patches", "grad classifier", "grad bias", "grad prefix")
    for name, a, b, c in zip(names, ours, theirs, exact):
        summed = name in ("grad classifier", "grad bias")  # over the N patches
        assert_within_rule(a, b, c, 1e-6 * (N ** 0.5 if summed else 1.0), f"{label}: {name}")


def small_inputs(n, requires_grad, seed):
    """The benchmark's inputs for N = n, with n / 100 rows of 64 channels."""
    generator = torch.Generator().manual_seed(seed)
    rows = n // 100
    tensors = dict(patches=torch.randn(2, rows, 64, generator=generator).requires_grad_(requires_grad),
                   classifier=torch.randn(2, 64, generator=generator).requires_grad_(requires_grad))
    if requires_grad:
        tensors.update(grad_logits=torch.randn(2, rows, generator=generator),
                       grad_masked=torch.randn(2, rows, 64, generator=generator))
    return tensors


def test_the_check_finds_wrong_results(monkeypatch):
    """The check each variant passes before it is timed: the defaults pass it; a forward that masks
    with the other form, or a backward whose blocks leave columns of the patches' gradient unwritten
    (poisoned by the check itself, NaN), fails it, named."""
    from benchmarks import tune_seed_mask
    monkeypatch.setattr(tune_seed_mask, "inputs", small_inputs)
    torch.use_deterministic_algorithms(False)  # this folder's own poisoning off (the fixture restores it)
    check = tune_seed_mask.results_check([900, 3600])
    assert check() is None
    launch_forward = seed_mask_module._launch_forward
    with replaced([(seed_mask_module, "_launch_forward",
                    lambda *args: launch_forward(*args[:-1], not args[-1]))]):  # sigmoid: the last
        assert check().startswith("N=900 masked: error ")
    with replaced([(seed_mask_module, "_backward_blocks", lambda d: (4, d // 2, 4))]):
        assert check().startswith("N=900 grad patches: error nan, the larger of PyTorch's and the defaults' ")
    assert check() is None


def test_the_tool_times_every_variant_in_every_case(monkeypatch, capsys):
    """``main`` on the CPU, with small inputs and a stand-in for the CUDA-graph timer that runs
    the calls: every variant passes the check and runs every case, and the table lists them all."""
    from benchmarks import tune_seed_mask
    calls_timed = []

    def run_calls(calls):
        for call in calls:
            call()
        calls_timed.append(len(calls))
        return 1e-6 * (1 + len(calls_timed) % 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "no GPU (test)")
    monkeypatch.setattr(tune_seed_mask, "inputs", small_inputs)
    monkeypatch.setattr(tune_seed_mask, "l2_rotation", lambda bytes_per_call: 2)
    monkeypatch.setattr(tune_seed_mask, "graphed_gpu_seconds", run_calls)
    monkeypatch.setattr(tune_seed_mask, "measure_copy_bandwidth", lambda: 3e12)
    checks = []

    def results_check(sizes):
        check = make_check(sizes)
        assert sizes == [900, 3600]

        def counted():
            checks.append(None)
            return check()
        return counted
    make_check = tune_seed_mask.results_check
    monkeypatch.setattr(tune_seed_mask, "results_check", results_check)
    benchmarked = []
    monkeypatch.setattr(tune_seed_mask, "benchmark_fastest", lambda *args: benchmarked.append(args))
    tune_seed_mask.main(["--then-benchmark", "tuned.json", "--benchmark-timeout", "35"])
    (tool, results, json_path, timeout_s), = benchmarked
    assert (tool, json_path, timeout_s) == ("seed_mask", "tuned.json", 35.0) and len(results) == 2 + len(VARIANTS)
    assert len(checks) == len(VARIANTS) and not [label for label, _ in results if "WrongResult" in label]
    assert calls_timed == [2] * (4 * (2 + len(VARIANTS)))  # the defaults first and last
    table = capsys.readouterr().out
    for label in ["defaults", *(label for label, _ in VARIANTS)]:
        assert f"| {label} |" in table
    assert "copy-bandwidth floor (3.00 TB/s): forward N=900 us" in table
