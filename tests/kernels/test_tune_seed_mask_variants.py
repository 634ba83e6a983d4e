"""Every alternative ``python -m benchmarks.tune_seed_mask`` times computes the same op, so that
whichever a GPU session finds fastest can become the default as it is."""
import sys
from pathlib import Path

import pytest
import torch

from restr_fast.kernels import seed_mask
from restr_fast.kernels.seed_mask import seed_mask_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ is not an installed package
from benchmarks.tune_seed_mask import variants  # noqa: E402
from benchmarks.tuning import replaced  # noqa: E402

VARIANTS = variants()


@pytest.mark.parametrize("label, replacements", VARIANTS, ids=[label for label, _ in VARIANTS])
def test_variant_matches_the_reference_fp32(label, replacements, assert_within_rule):
    generator = torch.Generator().manual_seed(len(label))
    B, N, D, DP = 2, 37, 300, 24
    patches, classifier, bias, prefix = (torch.randn(*shape, generator=generator)
                                         for shape in ((B, N, D), (B, D), (B,), (B, N, DP)))
    grad_logits, grad_out = torch.randn(B, N, generator=generator), torch.randn(B, N, DP + D, generator=generator)

    def outputs_and_grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (patches, classifier, bias, prefix)]
        logits, out = fn(*leaves)
        grads = torch.autograd.grad([logits, out], leaves, [grad_logits.to(dtype), grad_out.to(dtype)])
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
        assert_within_rule(a, b, c, 1e-5, f"{label}: {name}")
