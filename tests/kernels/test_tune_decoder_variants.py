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
from benchmarks.tune_decoder import variants  # noqa: E402
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


def test_the_tool_times_every_variant(monkeypatch, capsys):
    """``main``'s glue on the CPU, with stand-ins for the GPU workload and timer: each variant is
    timed with its replacements in place, and the table lists them all."""
    from benchmarks import tune_decoder
    seen = []

    def median_ms(step):
        seen.append(decoder_module._backward_blocks)
        return 1.0 + len(seen) % 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "no GPU (test)")
    monkeypatch.setattr(tune_decoder, "workload", lambda impl, image_size, patch_size, decoder_only: None)
    monkeypatch.setattr(tune_decoder, "median_ms", median_ms)
    benchmarked = []
    monkeypatch.setattr(tune_decoder, "benchmark_fastest", lambda *args: benchmarked.append(args))
    default = decoder_module._backward_blocks
    tune_decoder.main([])
    (tool, results, json_path, timeout_s), = benchmarked
    assert (tool, json_path, timeout_s) == ("decoder", None, 60.0) and len(results) == 2 + len(VARIANTS)
    assert len(seen) == 2 + len(VARIANTS)  # the defaults first and last
    assert sum(blocks is not default for blocks in seen) == sum(
        any(name == "_backward_blocks" for _, name, _ in replacements) for _, replacements in VARIANTS)
    assert decoder_module._backward_blocks is default
    table = capsys.readouterr().out
    for label in ["defaults", *(label for label, _ in VARIANTS)]:
        assert f"| {label} |" in table
