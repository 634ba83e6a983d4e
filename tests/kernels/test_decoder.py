"""The fused decoder kernels against the reference decoder (DESIGN.md section 6)."""
import importlib
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy
import pytest
import torch
import torch.nn.functional as F

from restr_fast import get_config
from restr_fast.kernels import fused_decoder, op_registry, upsample_linear_act
from restr_fast.kernels.decoder import decoder_reference, upsample_linear_act_reference
from restr_fast.kernels.sizes import cdiv
from restr_fast.models.decoder import Decoder, upsample2x

sys.path.insert(0, str(Path(__file__).parent))  # the tests' helper modules
from decoder_exactness import (SLOPE, assert_clear_of_the_kink, fp32_interpolation_weights,  # noqa: E402
                               pre_activations, upsample2x_with_fp32_weights, zero_at_the_kink)

decoder_module = importlib.import_module("restr_fast.kernels.decoder")
requires_gpu = pytest.mark.gpu(reason="needs a CUDA GPU (bf16/fp16 at real size)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, seed, dtype=torch.float32, scale=1.0):
    """Drawn on the CPU, so that a GPU tests the inputs whose distances from the kink the CPU checked."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).to(DEVICE)


def grads_of(fn, tensors, grad):
    """fn's output and the gradients of every tensor in ``tensors`` for upstream ``grad``."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    return out.detach(), list(torch.autograd.grad(out, leaves, grad))


def decoder_weights(channels, seed, dtype=torch.float32):
    """Block weights (C/2, C), ... with the model's initialisation scale, and the head's."""
    weights = [rand(c // 2, c, seed=seed + k, dtype=dtype, scale=(2 / c) ** 0.5) for k, c in enumerate(channels)]
    last = channels[-1] // 2
    return weights, rand(1, last, seed=seed + 50, dtype=dtype, scale=last ** -0.5), rand(1, seed=seed + 51, dtype=dtype)


@pytest.fixture(params=[False, True], ids=["lanes on input columns", "lanes on column pairs"])
def backward_lanes(request, monkeypatch):
    """Each backward kernel in turn: lanes on input columns (the default) and on pairs of output
    columns (``tune_decoder``'s variant, a candidate default)."""
    monkeypatch.setattr(decoder_module, "BACKWARD_ON_COLUMN_PAIRS", request.param)
    return request.param


# (B, h, w, C, C_out): odd sizes, single rows and columns, a non-power-of-two channel count
BLOCK_SHAPES = [(2, 3, 5, 12, 6), (1, 1, 1, 8, 4), (1, 4, 1, 6, 3), (3, 2, 7, 20, 10), (1, 7, 3, 96, 48), (1, 2, 2, 300, 150),
                (1, 15, 20, 96, 48), (1, 15, 20, 768, 384), (1, 30, 30, 64, 32)]  # larger maps: 300 and 900 pixels


@pytest.mark.usefixtures("backward_lanes")
@pytest.mark.parametrize("B, h, w, C, C_out", BLOCK_SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_block_matches_the_reference_fp32(B, h, w, C, C_out, with_bias, assert_within_rule):
    seed = B * h * w + C
    tensors = [rand(B, h, w, C, seed=seed), rand(C_out, C, seed=seed + 1, scale=C ** -0.5)]
    if with_bias:
        tensors.append(rand(C_out, seed=seed + 2))
    pre = F.linear(*pre_activations(tensors[0], [None]), *(t.double() for t in tensors[1:]))
    grad = zero_at_the_kink(rand(B, 2 * h, 2 * w, C_out, seed=seed + 3), pre)
    with fp32_interpolation_weights():
        exact_out, exact_grads = grads_of(upsample_linear_act_reference, [t.double() for t in tensors], grad.double())
    torch_out, torch_grads = grads_of(upsample_linear_act_reference, tensors, grad)
    our_out, our_grads = grads_of(upsample_linear_act, tensors, grad)
    assert our_out.shape == (B, 2 * h, 2 * w, C_out) and our_out.dtype == torch.float32
    assert_within_rule(our_out, torch_out, exact_out, 1e-6, "output")
    for name, ours, theirs, exact in zip(("x", "weight", "bias"), our_grads, torch_grads, exact_grads):
        summed = name != "x"  # over the B * 2h * 2w outputs
        assert_within_rule(ours, theirs, exact, 1e-6 * ((B * h * w) ** 0.5 if summed else 1.0), f"grad {name}")


# (patch size, D, h, w): three blocks (patch 8) and four (patch 16), odd and non-square grids
DECODER_CASES = [(8, 12, 3, 5), (16, 16, 2, 3), (8, 20, 1, 4), (16, 12, 4, 1)]


@pytest.mark.usefixtures("backward_lanes")
@pytest.mark.parametrize("patch, dim, h, w", DECODER_CASES)
def test_whole_decoder_matches_the_reference_decoder_fp32(patch, dim, h, w, assert_within_rule):
    config = get_config("restr-tiny", patch_size=patch, image_size=4 * patch, dim=dim)
    torch.manual_seed(patch + dim)
    reference = Decoder(config).to(DEVICE)
    fast = Decoder(get_config(config, fast=True)).to(DEVICE)
    fast.load_state_dict(reference.state_dict())
    exact = Decoder(config).to(DEVICE).double()
    exact.load_state_dict(reference.state_dict())
    x = rand(2, h, w, 2 * dim, seed=h * w)
    grad = rand(2, 1, patch * h, patch * w, seed=7)
    assert_clear_of_the_kink(x, [block.linear.weight for block in exact.blocks])

    outputs, grads = {}, {}
    for name, model, dtype in (("exact", exact, torch.float64), ("torch", reference, torch.float32),
                               ("ours", fast, torch.float32)):
        leaf = x.to(dtype).detach().clone().requires_grad_()  # (x.to(float32) is x itself)
        with fp32_interpolation_weights() if name == "exact" else nullcontext():
            out = model(leaf)
            out.backward(grad.to(dtype))
        outputs[name] = out.detach()
        grads[name] = {"input": leaf.grad, **{n: p.grad for n, p in model.named_parameters()}}
    assert outputs["ours"].shape == (2, 1, patch * h, patch * w)
    assert_within_rule(outputs["ours"], outputs["torch"], outputs["exact"], 1e-6, "pixel logits")
    assert set(grads["ours"]) == {"input", "head.weight", "head.bias"} | {
        f"blocks.{k}.linear.weight" for k in range(config.decoder_blocks)}
    for name in grads["ours"]:
        assert_within_rule(grads["ours"][name], grads["torch"][name], grads["exact"][name],
                           1e-6 * (patch * (h * w) ** 0.5 if name != "input" else 1.0), f"grad {name}")


def assert_two_block_decoder_matches(channels, x, grad, seed, assert_within_rule):
    """fused_decoder with two blocks of ``channels`` (C, C/2) against the reference: output and the
    gradients of x, both block weights and the head's weight and bias."""
    weights, head_weight, head_bias = decoder_weights(channels, seed=seed)
    tensors = [x, *weights, head_weight, head_bias]

    def run(fn):
        return lambda x, w0, w1, hw, hb: fn(x, [w0, w1], hw, hb, SLOPE)
    assert_clear_of_the_kink(x, weights)
    with fp32_interpolation_weights():
        exact_out, exact_grads = grads_of(run(decoder_reference), [t.double() for t in tensors], grad.double())
    torch_out, torch_grads = grads_of(run(decoder_reference), tensors, grad)
    our_out, our_grads = grads_of(run(fused_decoder), tensors, grad)
    assert_within_rule(our_out, torch_out, exact_out, 1e-6, "output")
    names = ("x", "weight 0", "weight 1", "head weight", "head bias")
    for name, ours, theirs, exact in zip(names, our_grads, torch_grads, exact_grads):
        assert_within_rule(ours, theirs, exact, 1e-6 * (12 if name != "x" else 1.0), f"grad {name}")


@pytest.mark.parametrize("strip_rows, lanes", [(1, 16), (4, 16), (2, 4), (3, 2)])
def test_backward_split_into_strips_and_tiles(monkeypatch, backward_lanes, strip_rows, lanes, assert_within_rule):
    """On a GPU the backward runs as many programs: strips of input rows (each walking one pair of
    output rows beyond its edge), tiles of columns and of channels; the head weight's gradient is
    the sum of their partial sums. Each output pixel must count once. Tiles of column pairs overlap
    by one, each storing ``lanes`` - 1 input columns: with 4 lanes, 3, and with 2, 1, which divide
    both maps' widths (9 and 18), so that the last tile's last lane holds pair w, whose pixel 2w - 1
    no other tile counts for the head weight."""
    monkeypatch.setattr(decoder_module, "_strip_rows", lambda h: strip_rows)
    # the tiles of all kernels: ``lanes`` columns (or column pairs) by 16 channels
    monkeypatch.setattr(decoder_module, "_tile", lambda channels, gpu_channels, gpu_elements: (lanes, 16))
    # block input (1, 3, 9, 40); head input (1, 6, 18, 20), 19 column pairs: two forward tiles of 16
    assert_two_block_decoder_matches((80, 40), rand(1, 3, 9, 80, seed=4), rand(1, 1, 12, 36, seed=5), 3,
                                     assert_within_rule)


@pytest.fixture
def stored_addresses(monkeypatch):
    """The addresses the kernels' stores write, one array per store, recorded in Triton's
    interpreter: it runs programs one after another, so a value one program stores and another
    overwrites would otherwise go unseen, where on a GPU the two race."""
    if not op_registry.INTERPRETED:
        pytest.skip("records the stores of Triton's interpreter: run with TRITON_INTERPRET=1")
    from triton.runtime.interpreter import InterpreterBuilder
    store, stored = InterpreterBuilder.create_masked_store, []

    def record(self, pointers, value, mask, *args):
        addresses = numpy.asarray(pointers.data)
        stored.append(addresses[numpy.broadcast_to(numpy.asarray(mask.data, dtype=bool), addresses.shape)])
        return store(self, pointers, value, mask, *args)
    monkeypatch.setattr(InterpreterBuilder, "create_masked_store", record)
    return stored


@pytest.mark.parametrize("head", [False, True], ids=["block", "head"])
@pytest.mark.parametrize("lanes, strip_rows", [(2, 1), (4, 2)])
@pytest.mark.parametrize("shape", [(2, 1, 1, 20), (2, 4, 1, 20), (2, 1, 5, 20), (2, 5, 7, 20)])
def test_backward_stores_each_gradient_once(monkeypatch, backward_lanes, stored_addresses, shape, lanes, strip_rows,
                                            head, assert_within_rule):
    """A GPU runs the backward's programs in any order and at once, so each element of grad t, and
    of the head weight's partial sums, must be stored by exactly one program and lane. Tiles of 2
    and 4 lanes, 20 channels in tiles of 16; a single row or column (where pair w, on the last lane
    of the last tile, is counted there alone), several strips and batch rows."""
    monkeypatch.setattr(decoder_module, "_strip_rows", lambda h: strip_rows)
    monkeypatch.setattr(decoder_module, "_backward_blocks", lambda channels, dtype: (lanes, 16, 4))
    B, h, w, C = shape
    t = rand(*shape, seed=h * w)
    grad = rand(B, 2 * h, 2 * w, *(() if head else (C,)), seed=h + w)
    head_weight = rand(C, seed=C) if head else None
    if head:  # the head sums over channels: no single pixel's gradient can be left out
        assert_clear_of_the_kink(t, [None])
    else:
        grad = zero_at_the_kink(grad, *pre_activations(t, [None]))
    grad_t = torch.empty_like(t)
    grad_weight = decoder_module._launch_upsample_act_backward(t, grad, head_weight, grad_t, SLOPE)

    stored = numpy.concatenate(stored_addresses)
    first = grad_t.data_ptr()
    in_grad_t = (stored >= first) & (stored < first + grad_t.numel() * grad_t.element_size())
    every_element = first + numpy.arange(grad_t.numel()) * grad_t.element_size()
    assert numpy.array_equal(numpy.sort(stored[in_grad_t]), every_element)
    programs = B * cdiv(h, strip_rows) * cdiv(w, lanes - 1 if backward_lanes else lanes)
    partials = stored[~in_grad_t]  # with the head, each program's partial sums of its weight's gradient
    assert len(partials) == (programs * C if head else 0) and len(numpy.unique(partials)) == len(partials)

    def backward(t, head_weight=None):
        up = upsample2x_with_fp32_weights(t) if t.dtype == torch.float64 else upsample2x(t)
        y = F.leaky_relu(up, SLOPE)
        return y if head_weight is None else y @ head_weight
    exact, theirs = (grads_of(backward, [t.to(dtype)] + ([head_weight.to(dtype)] if head else []), grad.to(dtype))[1]
                     for dtype in (torch.float64, torch.float32))
    for name, ours, torch_grad, exact_grad in zip(("grad t", "grad head weight"), [grad_t, grad_weight], theirs, exact):
        assert_within_rule(ours, torch_grad, exact_grad, 1e-6 * ((h * w) ** 0.5 if name != "grad t" else 1.0), name)


@pytest.mark.usefixtures("backward_lanes")
def test_the_gpu_tiles(monkeypatch, assert_within_rule):
    """The tiles the launchers choose on a GPU (the interpreter's are 16x larger), in fp32: forward
    tiles of 32 column pairs x 64 channels for a block of 192 channels and 64 x 32 for the head's 96
    (the presets' last), each map's pairs in two tiles, the second cut short by the map's edge."""
    monkeypatch.setattr(op_registry, "INTERPRETED", False)  # the launchers' GPU choices
    monkeypatch.setattr(op_registry, "kernel_can_run", lambda tensor: True)  # CPU tensors still take the kernels
    assert decoder_module._row_blocks(192)[:2] == (32, 64) and decoder_module._row_blocks(96)[:2] == (64, 32)
    # block input (1, 2, 40, 192): 41 pairs; head input (1, 4, 80, 96): 81 pairs
    assert_two_block_decoder_matches((384, 192), rand(1, 2, 40, 384, seed=21), rand(1, 1, 8, 160, seed=10), 8,
                                     assert_within_rule)


@pytest.mark.usefixtures("backward_lanes")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, h, w, C", [(2, 5, 7, 24), (1, 3, 1, 96), (1, 1, 6, 5)])
def test_kernels_in_low_precision(dtype, B, h, w, C, assert_within_rule, assert_rounded_once):
    """Loads, fp32 arithmetic and stores in bf16/fp16 (on the CPU too, under the interpreter). An
    identity weight makes the low-resolution product exact, so the block and the head run the
    kernels on the very inputs the fp64 reference gets: no rounding to bf16/fp16 before the activation
    flips a LeakyReLU slope in one computation and not the other (and the inputs keep clear of the
    kink by more than fp32's rounding). What the kernels return is then each exact value rounded
    once; the block weight's gradient, PyTorch's sum over pixels of the kernels' rounded gradient, is
    held to the tolerance rule alone."""
    x = rand(B, h, w, C, seed=C + h, dtype=dtype)
    assert_clear_of_the_kink(x, [None])
    identity = torch.eye(C, device=DEVICE, dtype=dtype)
    head_weight, head_bias = rand(C, seed=31, dtype=dtype, scale=C ** -0.5), rand(1, seed=32, dtype=dtype)
    cases = {  # name: (ours, reference, inputs, upstream gradient)
        "block": (upsample_linear_act, upsample_linear_act_reference, [x, identity],
                  rand(B, 2 * h, 2 * w, C, seed=33, dtype=dtype)),
        "head": (lambda x, i, hw, hb: fused_decoder(x, [i], hw, hb), lambda x, i, hw, hb: decoder_reference(x, [i], hw, hb),
                 [x, identity, head_weight, head_bias], rand(B, 1, 2 * h, 2 * w, seed=34, dtype=dtype)),
    }
    for case, (ours_fn, reference_fn, tensors, grad) in cases.items():
        exact_out, exact_grads = grads_of(reference_fn, [t.double() for t in tensors], grad.double())
        fp32_out, fp32_grads = grads_of(reference_fn, [t.float() for t in tensors], grad.float())
        torch_out, torch_grads = grads_of(reference_fn, tensors, grad)
        our_out, our_grads = grads_of(ours_fn, tensors, grad)
        names = ["output", "grad x", "grad weight", "grad head weight", "grad head bias"]
        for name, ours, theirs, fp32, exact in zip(names, [our_out, *our_grads], [torch_out, *torch_grads],
                                                   [fp32_out, *fp32_grads], [exact_out, *exact_grads]):
            assert ours.dtype == dtype and ours.shape == exact.shape, f"{case}: {name}"
            assert_within_rule(ours, theirs, exact, 1e-3 * exact.abs().max().item(), f"{case}: {name}")
            if name != "grad weight":
                assert_rounded_once(ours, fp32, exact, f"{case}: {name}")


def test_channels_first_views_and_strided_inputs():
    x = rand(2, 10, 3, 5, seed=1).permute(0, 2, 3, 1)  # channels-last view of a channels-first tensor
    weight = rand(5, 10, seed=2)
    torch.testing.assert_close(upsample_linear_act(x, weight).double(),
                               upsample_linear_act_reference(x.double(), weight.double()), rtol=1e-5, atol=1e-5)


def test_strided_and_expanded_head_weights():
    weights, head_weight, head_bias = decoder_weights((16, 8), seed=2)
    x = rand(2, 3, 5, 16, seed=3)
    channels = head_weight.numel()
    strided = torch.stack([head_weight.reshape(-1), torch.full((channels,), float("nan"), device=DEVICE)], 1)[:, 0]
    expanded = head_weight.reshape(-1)[:1].expand(channels)
    assert strided.stride() == (2,) and expanded.stride() == (0,)
    for weight in (strided, expanded):
        exact = decoder_reference(x.double(), [w.double() for w in weights], weight.double(), head_bias.double())
        torch.testing.assert_close(fused_decoder(x, weights, weight, head_bias).double(), exact, rtol=1e-5, atol=1e-5)


def test_gradients_are_not_differentiable_again_and_absent_ones_are_none():
    """As for seed_mask: a gradient taken with create_graph=True raises, and a gradient that never
    arrives gives none."""
    weights, head_weight, head_bias = decoder_weights((16, 8), seed=2)
    x = rand(2, 3, 5, 16, seed=3).requires_grad_()
    for decode in (lambda: fused_decoder(x, weights, head_weight, head_bias), lambda: upsample_linear_act(x, weights[0])):
        with pytest.raises(RuntimeError, match="no second derivative: a gradient taken with create_graph=True"):
            torch.autograd.grad(decode().square().sum(), x, create_graph=True)

    class NoGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, grad):
            return None

    other = torch.ones(3, requires_grad=True)
    for decode in (lambda: fused_decoder(x, weights, head_weight, head_bias), lambda: upsample_linear_act(x, weights[0])):
        loss = NoGradient.apply(decode()).sum() + other.sum()
        assert torch.autograd.grad(loss, [x, other], allow_unused=True)[0] is None


def test_float64_runs_in_pytorch(monkeypatch):
    monkeypatch.setattr(decoder_module, "_call", lambda *args: pytest.fail("a kernel was called"))
    weights, head_weight, head_bias = decoder_weights((16, 8), seed=2, dtype=torch.float64)
    x = rand(2, 3, 5, 16, seed=3, dtype=torch.float64)
    out = fused_decoder(x, weights, head_weight, head_bias)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, decoder_reference(x, weights, head_weight, head_bias))
    torch.testing.assert_close(upsample_linear_act(x, weights[0]), upsample_linear_act_reference(x, weights[0]))


def test_cpu_without_the_interpreter_falls_back_to_pytorch(monkeypatch):
    monkeypatch.setattr(op_registry, "INTERPRETED", False)
    monkeypatch.setattr(decoder_module, "_call", lambda *args: pytest.fail("a kernel was called"))
    weights, head_weight, head_bias = decoder_weights((32, 16), seed=40)
    weights, head_weight, head_bias = [w.cpu() for w in weights], head_weight.cpu(), head_bias.cpu()
    x = rand(2, 3, 4, 32, seed=43).cpu()
    torch.testing.assert_close(fused_decoder(x, weights, head_weight, head_bias),
                               decoder_reference(x, weights, head_weight, head_bias))
    torch.testing.assert_close(upsample_linear_act(x, weights[0]), upsample_linear_act_reference(x, weights[0]))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on inf
def test_non_finite_inputs_reach_only_the_outputs_they_reach_in_pytorch(monkeypatch):
    """Against PyTorch's form of the same order (the fallback), with inf, -inf and NaN in x: every
    output PyTorch gives finite is finite and equal here, and the rest stay non-finite but where
    PyTorch's NaN comes from an input multiplied by an interpolation weight of 0, a product the
    kernels skip. (Where PyTorch gives +-inf the kernels may give NaN: they interpolate between
    two columns as a + l (b - a).)"""
    weights, head_weight, head_bias = decoder_weights((12, 6), seed=60)
    x = rand(2, 4, 5, 12, seed=61)
    x.view(-1)[torch.tensor([7, 100, 333])] = torch.tensor([float("inf"), -float("inf"), float("nan")], device=DEVICE)
    for decode in (lambda: fused_decoder(x, weights, head_weight, head_bias), lambda: upsample_linear_act(x, weights[0])):
        ours = decode()
        with monkeypatch.context() as patch:
            patch.setattr(op_registry, "kernel_can_run", lambda tensor: False)
            theirs = decode()
        assert not ours.isfinite().all() and not theirs.isfinite().all()
        finite = theirs.isfinite()
        torch.testing.assert_close(ours[finite], theirs[finite], rtol=1e-5, atol=1e-5)
        assert theirs[ours.isfinite() & ~finite].isnan().all()


@pytest.mark.usefixtures("backward_lanes")
def test_compiled_function_traces_through_the_ops_without_graph_breaks():
    weights, head_weight, head_bias = decoder_weights((16, 8), seed=2)
    x, grad = rand(2, 3, 5, 16, seed=3), rand(2, 1, 12, 20, seed=4)

    def decode(x, w0, w1, hw, hb):
        block = upsample_linear_act(x, w0)  # (B, 2h, 2w, 8)
        return fused_decoder(x, [w0, w1], hw, hb) + block.mean()

    backend = "inductor" if DEVICE == "cuda" else "aot_eager"  # inductor has no CPU path for Triton ops
    compiled = torch.compile(decode, fullgraph=True, backend=backend)
    tensors = [x, *weights, head_weight, head_bias]
    eager_out, eager_grads = grads_of(decode, tensors, grad)
    comp_out, comp_grads = grads_of(compiled, tensors, grad)
    for a, b in zip([eager_out, *eager_grads], [comp_out, *comp_grads]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, error, message", [
    (lambda x, w, hw: upsample_linear_act(x[0], w[0]), ValueError, r"channels-last \(B, h, w, C\) map"),
    (lambda x, w, hw: upsample_linear_act(x.permute(0, 3, 1, 2), w[0]), ValueError, "looks channels-first"),
    (lambda x, w, hw: upsample_linear_act(x, w[1]), ValueError, r"must be a \(C_out, 16\) Linear weight"),
    (lambda x, w, hw: upsample_linear_act(x.long(), w[0].long()), TypeError, "support float32, float16 and bfloat16"),
    (lambda x, w, hw: upsample_linear_act(x, w[0].double()), TypeError, "weight has dtype torch.float64"),
    (lambda x, w, hw: upsample_linear_act(x, w[0].half()), TypeError, "cast them to one dtype"),
    (lambda x, w, hw: upsample_linear_act(x, w[0], torch.zeros(3)), ValueError, r"bias must have shape \(8,\)"),
    (lambda x, w, hw: upsample_linear_act(x, w[0][:0]), ValueError, r"weight has no output channels \(shape \(0, 16\)\)"),
    (lambda x, w, hw: fused_decoder(x, [w[0][:0]], hw[:, :0]), ValueError, r"weights\[0\] has no output channels"),
    (lambda x, w, hw: upsample_linear_act(x, w[0], None, "0.1"), TypeError, "negative_slope must be a real number"),
    (lambda x, w, hw: fused_decoder(x, w, hw, None, "0.1"), TypeError, "negative_slope must be a real number"),
    (lambda x, w, hw: fused_decoder(x, [], hw), ValueError, "at least one block weight"),
    (lambda x, w, hw: fused_decoder(x, [w[0], w[0]], hw), ValueError, r"weights\[1\] must be a \(C_out, 8\)"),
    # a later block's weight that happens to fit x's second dimension: no channels-first hint
    (lambda x, w, hw: fused_decoder(x, [w[0], w[1][:, :3]], hw), ValueError, r"weights\[1\] must be .* got \(4, 3\)$"),
    (lambda x, w, hw: fused_decoder(x, w, hw[:, :3]), ValueError, r"head_weight must have shape \(4,\)"),
    (lambda x, w, hw: fused_decoder(x, w, hw.tolist()), ValueError, r"head_weight must have shape \(4,\), got list"),
    (lambda x, w, hw: fused_decoder(x, w, hw, torch.zeros(2)), ValueError, r"head_bias must have shape \(1,\)"),
])
def test_bad_inputs_are_named(call, error, message):
    weights, head_weight, _ = decoder_weights((16, 8), seed=0)
    with pytest.raises(error, match=message):
        call(torch.randn(2, 3, 5, 16), [w.cpu() for w in weights], head_weight.cpu())


@requires_gpu
def test_mixed_devices_are_named():
    weights, head_weight, _ = decoder_weights((16, 8), seed=0)
    with pytest.raises(ValueError, match="weights\\[0\\] is on cpu"):
        fused_decoder(torch.randn(2, 3, 5, 16, device="cuda"), [w.cpu() for w in weights], head_weight)


@pytest.mark.usefixtures("backward_lanes")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, h, w, channels", [
    (2, 6, 6, (192, 96, 48, 24)),  # 96 x 96 maps, in 10 to 15 s under the interpreter
    pytest.param(8, 30, 30, (1536, 768, 384, 192), marks=requires_gpu, id="real size"),  # restr-b16, 480 x 480
])
def test_low_precision_whole_decoder(dtype, B, h, w, channels, assert_within_rule):
    """Four blocks and the head on random weights, in bf16/fp16, against the fp64 decoder on the fp32
    inputs. The products run at low resolution here and at full resolution in PyTorch, so the two round
    different values before each activation, and each flips LeakyReLU's slope for its own few
    pre-activations near 0; over maps of 96 x 96 and more, enough that their largest errors compare.
    (On a 12 x 18 block output of 48 channels, one flip in one computation and none in the other
    decided the comparison, up to 16 times over the bound.)"""
    weights, head_weight, head_bias = decoder_weights(channels, seed=11)
    x, grad = rand(B, h, w, channels[0], seed=12), rand(B, 1, 16 * h, 16 * w, seed=13)
    tensors = [x, *weights, head_weight, head_bias]

    def run(fn):
        return lambda x, *rest: fn(x, list(rest[:4]), rest[4], rest[5], SLOPE)
    exact_out, exact_grads = grads_of(run(decoder_reference), [t.double() for t in tensors], grad.double())
    low = [t.to(dtype) for t in tensors]
    torch_out, torch_grads = grads_of(run(decoder_reference), low, grad.to(dtype))
    our_out, our_grads = grads_of(run(fused_decoder), low, grad.to(dtype))
    assert our_out.dtype == dtype
    names = ["pixel logits", "grad x"] + [f"grad weight {k}" for k in range(4)] + ["grad head weight", "grad head bias"]
    for name, ours, theirs, exact in zip(names, [our_out, *our_grads], [torch_out, *torch_grads], [exact_out, *exact_grads]):
        assert ours.dtype == dtype, name
        assert_within_rule(ours, theirs, exact, 1e-3 * exact.abs().max().item(), name)


@pytest.mark.usefixtures("backward_lanes")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, h, w, C", [
    (2, 16, 16, 192), (1, 4, 120, 96),  # in 2 s under the interpreter
    pytest.param(8, 30, 30, 1536, marks=requires_gpu), pytest.param(3, 17, 45, 96, marks=requires_gpu),
    pytest.param(2, 1, 240, 192, marks=requires_gpu),
])
def test_low_precision_block(dtype, B, h, w, C, assert_within_rule):
    """One block on a random weight in bf16/fp16 against the fp64 block on the fp32 inputs: as
    above, on maps large enough for many LeakyReLU flips in both computations."""
    tensors = [rand(B, h, w, C, seed=C), rand(C // 2, C, seed=1, scale=C ** -0.5)]
    grad = rand(B, 2 * h, 2 * w, C // 2, seed=2)
    exact_out, exact_grads = grads_of(upsample_linear_act_reference, [t.double() for t in tensors], grad.double())
    low = [t.to(dtype) for t in tensors]
    torch_out, torch_grads = grads_of(upsample_linear_act_reference, low, grad.to(dtype))
    our_out, our_grads = grads_of(upsample_linear_act, low, grad.to(dtype))
    for name, ours, theirs, exact in zip(("output", "grad x", "grad weight"), [our_out, *our_grads],
                                         [torch_out, *torch_grads], [exact_out, *exact_grads]):
        assert ours.dtype == dtype, name
        assert_within_rule(ours, theirs, exact, 1e-3 * exact.abs().max().item(), name)
