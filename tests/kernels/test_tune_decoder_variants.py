"""Every alternative ``python -m benchmarks.tune_decoder`` times computes the same decoder, so that
whichever a GPU session finds fastest can become the default as it is."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from restr_fast.kernels import fused_decoder
from restr_fast.kernels.decoder import decoder_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not an installed package
sys.path.insert(0, str(Path(__file__).parent))  # the tests' helper modules
from benchmarks.tune_decoder import results_check, variants  # noqa: E402
from benchmarks.tuning import replaced  # noqa: E402
from decoder_exactness import SLOPE, assert_clear_of_the_kink, fp32_interpolation_weights  # noqa: E402

decoder_module = importlib.import_module("restr_fast.kernels.decoder")
VARIANTS = variants()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU, the kernels the tool times


@pytest.mark.parametrize("label, replacements", VARIANTS, ids=[label for label, _ in VARIANTS])
def test_variant_matches_the_reference_fp32(monkeypatch, label, replacements, assert_within_rule):
    for module, name, replacement in replacements:
        monkeypatch.setattr(module, name, replacement)
    generator = torch.Generator().manual_seed(0)  # inputs whose pre-activations keep clear of the kink
    x = torch.randn(1, 3, 5, 40, generator=generator)
    weights = [torch.randn(20, 40, generator=generator) * 40 ** -0.5, torch.randn(10, 20, generator=generator) * 20 ** -0.5]
    head_weight, head_bias = torch.randn(1, 10, generator=generator) * 10 ** -0.5, torch.randn(1, generator=generator)
    grad = torch.randn(1, 1, 12, 20, generator=generator)
    tensors = [x, *weights, head_weight, head_bias]
    assert_clear_of_the_kink(x, weights)

    def outputs_and_grads(fn, dtype):
        leaves = [t.to(DEVICE, dtype).requires_grad_() for t in tensors]
        out = fn(leaves[0], leaves[1:3], leaves[3], leaves[4], SLOPE)
        return [out.detach(), *torch.autograd.grad(out, leaves, grad.to(DEVICE, dtype))]

    with fp32_interpolation_weights():
        exact = outputs_and_grads(decoder_reference, torch.float64)
    theirs = outputs_and_grads(decoder_reference, torch.float32)
    ours = outputs_and_grads(fused_decoder, torch.float32)
    names = ("pixel logits", "grad x", "grad weight 0", "grad weight 1", "grad head weight", "grad head bias")
    for name, a, b, c in zip(names, ours, theirs, exact):
        summed = name not in ("pixel logits", "grad x")  # over the 240 output pixels
        assert_within_rule(a, b, c, 1e-6 * (240 ** 0.5 if summed else 1.0), f"{label}: {name}")


def test_the_check_finds_wrong_results(capsys):
    """The check each variant passes before it is timed, in bf16 on a 16 x 16 map: the defaults pass
    it (and the rule against PyTorch); a head that writes nothing (its output poisoned by the check
    itself, NaN), or a backward 10 % off, fails it, named."""
    torch.use_deterministic_algorithms(False)  # this folder's own poisoning off (the fixture restores it)
    check = results_check(1, 4, (96, 48), SLOPE, device=DEVICE)
    assert capsys.readouterr().out == "the defaults against PyTorch: within the tolerance rule on every output\n"
    assert check() is None
    with replaced([(decoder_module, "_launch_head", lambda *args: None)]):
        assert check().startswith("pixel logits: error nan, the larger of PyTorch's and the defaults' ")
    launch_backward = decoder_module._launch_upsample_act_backward

    def backward_off(t, grad, head_weight, grad_t, negative_slope):
        head_weight_grad = launch_backward(t, grad, head_weight, grad_t, negative_slope)
        grad_t.mul_(1.1)
        return head_weight_grad
    with replaced([(decoder_module, "_launch_upsample_act_backward", backward_off)]):
        assert check().startswith("grad x: error ")
    assert check() is None


def test_the_tool_times_every_variant(monkeypatch, capsys):
    """``main``'s glue on the CPU, with stand-ins for the GPU workload, check and timer: each variant
    is checked and timed with its replacements in place, one with wrong results is not timed, and the
    table lists them all."""
    from benchmarks import tune_decoder
    seen, checked = [], []

    def results_check(batch, grid, channels, negative_slope):
        assert (batch, grid, channels, negative_slope) == (8, 30, (1536, 768, 384, 192), SLOPE)

        def check():
            checked.append(decoder_module.BACKWARD_STAGES)
            return "grad x: error nan, PyTorch's 0.1" if decoder_module.BACKWARD_STAGES == 3 else None
        return check

    def median_ms(step):
        seen.append(decoder_module._backward_blocks)
        return 1.0 + len(seen) % 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "no GPU (test)")
    monkeypatch.setattr(tune_decoder, "workload", lambda impl, image_size, patch_size, decoder_only: None)
    monkeypatch.setattr(tune_decoder, "median_ms", median_ms)
    monkeypatch.setattr(tune_decoder, "results_check", results_check)
    benchmarked = []
    monkeypatch.setattr(tune_decoder, "benchmark_fastest", lambda *args: benchmarked.append(args))
    default = decoder_module._backward_blocks
    tune_decoder.main([])
    (tool, results, json_path, timeout_s), = benchmarked
    assert (tool, json_path, timeout_s) == ("decoder", None, 60.0) and len(results) == 2 + len(VARIANTS)
    assert len(checked) == len(VARIANTS) and checked.count(3) == 1  # each variant once
    wrong = [(label, times) for label, times in results if "WrongResult" in label]
    assert wrong == [("backward in 3 pipeline stages: WrongResult: grad x: error nan, PyTorch's 0.1",
                      {"ms": float("inf")})]
    assert len(seen) == 1 + len(VARIANTS)  # the defaults first and last, not the wrong variant
    assert sum(blocks is not default for blocks in seen) == sum(
        any(name == "_backward_blocks" for _, name, _ in replacements) for _, replacements in VARIANTS)
    assert decoder_module._backward_blocks is default
    table = capsys.readouterr().out
    for label in ["defaults", *(label for label, _ in VARIANTS if "3 pipeline stages" not in label)]:
        assert f"| {label} |" in table
