"""The fused seed-classifier kernel against the reference op (DESIGN.md section 6)."""
import importlib
from types import SimpleNamespace

import pytest
import torch

from restr_fast.kernels import op_registry, seed_mask
from restr_fast.kernels.seed_mask import seed_mask_reference
from restr_fast.kernels.sizes import next_power_of_2

seed_mask_module = importlib.import_module("restr_fast.kernels.seed_mask")
requires_gpu = pytest.mark.gpu(reason="needs a CUDA GPU (bf16/fp16 at real size)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, N, D): every N of {1, 7, 900, 3600} and D of {64, 96, 300, 768}, odd sizes kept, sized for the interpreter
SHAPES = [(2, 1, 64), (3, 7, 96), (2, 7, 768), (1, 900, 300), (2, 300, 96), (1, 3600, 64), (1, 61, 768)]


def inputs(B, N, D, dtype=torch.float32, prefix_dim=None, seed=0):
    generator = torch.Generator(DEVICE).manual_seed(seed)
    def rand(*shape):
        return torch.randn(*shape, generator=generator, device=DEVICE, dtype=dtype)
    patches, classifier, bias = rand(B, N, D), rand(B, D), rand(B)
    prefix = rand(B, N, prefix_dim) if prefix_dim else None
    return patches, classifier, bias, prefix


def run(fn, tensors, grads):
    """Outputs and the input gradients for upstream gradients ``grads``."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    outputs = fn(*leaves)
    torch.autograd.backward([o for o in outputs], [g for g in grads])
    return [o.detach() for o in outputs], [t.grad if t is not None else None for t in leaves]


def reference(mask_form, with_bias=True):
    def fn(patches, classifier, bias, prefix=None):
        logits, masked = seed_mask_reference(patches, classifier, bias if with_bias else None, mask_form)
        return logits, masked if prefix is None else torch.cat([prefix, masked], dim=-1)
    return fn


def fused(mask_form, with_bias=True):
    def fn(patches, classifier, bias, prefix=None):
        return seed_mask(patches, classifier, bias=bias if with_bias else None, prefix=prefix, mask_form=mask_form)
    return fn


OUTPUT_NAMES = ("logits", "decoder input", "grad patches", "grad classifier", "grad bias", "grad prefix")


def assert_results_match_the_reference(tensors, grads, mask_form, with_bias, atol, assert_within_rule,
                                       assert_rounded_once):
    """The kernels' outputs and input gradients in the dtype of ``tensors`` (patches, classifier,
    bias, prefix; bias and prefix may be None) for upstream ``grads``, against the fp64 reference:
    within the tolerance rule of PyTorch in the same dtype, and in bf16 and fp16 rounded once."""
    dtype = tensors[0].dtype

    def reference_results(precision):
        cast = [t.to(precision) if t is not None else None for t in tensors]
        outputs, input_grads = run(reference(mask_form, with_bias), cast, [g.to(precision) for g in grads])
        return outputs + input_grads
    exact, fp32, theirs = (reference_results(precision) for precision in (torch.float64, torch.float32, dtype))
    outputs, input_grads = run(fused(mask_form, with_bias), tensors, grads)
    for name, ours, torch_same_dtype, torch_fp32, exact_result in zip(OUTPUT_NAMES, outputs + input_grads, theirs,
                                                                       fp32, exact):
        if exact_result is None:  # no bias or no prefix
            assert ours is None, name
            continue
        assert ours.dtype == dtype and ours.shape == exact_result.shape, name
        assert_within_rule(ours, torch_same_dtype, exact_result, atol, name)
        if dtype != torch.float32:
            assert_rounded_once(ours, torch_fp32, exact_result, name)


@pytest.mark.parametrize("B, N, D", SHAPES)
@pytest.mark.parametrize("mask_form", ["sigmoid", "logit"])
def test_forward_and_backward_match_the_reference_fp32(B, N, D, mask_form, assert_within_rule):
    tensors = inputs(B, N, D, seed=B * N + D)
    generator = torch.Generator(DEVICE).manual_seed(1)
    grads = [torch.randn(B, N, generator=generator, device=DEVICE), torch.randn(B, N, D, generator=generator, device=DEVICE)]
    exact_in = [t.double() for t in tensors[:3]]
    (exact_out, exact_grads) = run(reference(mask_form), exact_in, [g.double() for g in grads])
    (torch_out, torch_grads) = run(reference(mask_form), tensors[:3], grads)
    (our_out, our_grads) = run(fused(mask_form), tensors[:3], grads)
    for name, ours, theirs, exact in zip(("logits", "masked"), our_out, torch_out, exact_out):
        assert ours.dtype == torch.float32 and ours.shape == exact.shape
        assert_within_rule(ours, theirs, exact, 1e-6, name)
    for name, ours, theirs, exact in zip(("patches", "classifier", "bias"), our_grads, torch_grads, exact_grads):
        summed = name != "patches"  # over the N patches
        assert_within_rule(ours, theirs, exact, 1e-6 * (N ** 0.5 if summed else 1.0), f"grad {name}")


@pytest.mark.parametrize("mask_form", ["sigmoid", "logit"])
def test_prefix_builds_the_decoders_input(mask_form):
    B, N, D, DP = 2, 37, 96, 72
    tensors = inputs(B, N, D, prefix_dim=DP)
    grads = [torch.randn(B, N, device=DEVICE), torch.randn(B, N, DP + D, device=DEVICE)]
    exact_out, exact_grads = run(reference(mask_form), [t.double() for t in tensors], [g.double() for g in grads])
    our_out, our_grads = run(fused(mask_form), tensors, grads)
    assert our_out[1].shape == (B, N, DP + D)
    assert torch.equal(our_out[1][..., :DP], tensors[3])  # a plain copy
    for ours, exact in zip(our_out + our_grads, exact_out + exact_grads):
        torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-5)
    assert torch.equal(our_grads[3], grads[1][..., :DP])


@pytest.mark.parametrize("rows_per_block, D, dtype, with_bias", [
    (None, 96, torch.float32, True), (1, 300, torch.float32, True), (1, 300, torch.bfloat16, False)])
def test_backward_reduces_over_several_programs_per_row(monkeypatch, rows_per_block, D, dtype, with_bias,
                                                        assert_within_rule, assert_rounded_once):
    """On a GPU each batch row's classifier and bias gradients are summed from several programs'
    partials: here one block of rows per program, the launcher's (2 programs a row, one tile of
    the summing kernel), or a single row (45 programs: with at most 16 a tile, three steps of the
    summing kernel, the last ragged, over two column tiles), whose sums are cast to bf16 in the
    last case."""
    monkeypatch.setattr(seed_mask_module, "_rows_per_program", lambda batch, n, block_n, device: block_n)
    if rows_per_block is not None:
        monkeypatch.setattr(seed_mask_module, "SUM_MAX_SPLITS", 16)
        assert seed_mask_module._sum_blocks(45, D) == (16, 256)
        for name in ("_forward_blocks", "_backward_blocks"):
            blocks = getattr(seed_mask_module, name)
            monkeypatch.setattr(seed_mask_module, name, lambda *args, blocks=blocks: (rows_per_block, *blocks(*args)[1:]))
    B, N = 2, 45
    patches, classifier, bias, prefix = inputs(B, N, D, dtype=dtype, prefix_dim=8)
    tensors = [patches, classifier, bias if with_bias else None, prefix]
    generator = torch.Generator(DEVICE).manual_seed(3)
    grads = [torch.randn(B, N, generator=generator, device=DEVICE, dtype=dtype),
             torch.randn(B, N, 8 + D, generator=generator, device=DEVICE, dtype=dtype)]
    atol = 1e-6 if dtype == torch.float32 else 1e-3  # bf16: that of the low-precision tests below
    assert_results_match_the_reference(tensors, grads, "sigmoid", with_bias, atol, assert_within_rule,
                                       assert_rounded_once)


def forward_in_strips(monkeypatch, blocks_per_strip: int, stages: int) -> None:
    """The forward in strips of ``blocks_per_strip`` blocks of 2 rows a program (tune_seed_mask's
    variants), prefetched in ``stages``."""
    monkeypatch.setattr(seed_mask_module, "FORWARD_STAGES", stages)
    monkeypatch.setattr(seed_mask_module, "_forward_blocks", lambda d, dp: (2, next_power_of_2(max(d, dp)), 4))
    monkeypatch.setattr(seed_mask_module, "_forward_rows_per_program",
                        lambda batch, n, block_n, device: blocks_per_strip * block_n)


def assert_forward_matches_the_reference(N, D, DP, seed, mask_form="sigmoid", with_bias=True):
    """fp32 logits and decoder input of B = 2 batch rows, with a prefix and into a poisoned out=
    buffer wider than the output, against the fp64 reference."""
    B = 2
    patches, classifier, bias, prefix = inputs(B, N, D, prefix_dim=DP, seed=seed)
    bias = bias if with_bias else None
    exact_logits, exact_masked = seed_mask_reference(patches.double(), classifier.double(),
                                                     bias.double() if with_bias else None, mask_form)
    logits, out = seed_mask(patches, classifier, bias=bias, prefix=prefix, mask_form=mask_form)
    torch.testing.assert_close(logits.double(), exact_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[..., :DP], prefix)
    torch.testing.assert_close(out[..., DP:].double(), exact_masked, rtol=1e-5, atol=1e-5)
    buffer = torch.full((B, N, D + 5), float("nan"), device=DEVICE)
    seed_mask(patches, classifier, buffer, bias=bias, mask_form=mask_form)
    torch.testing.assert_close(buffer[..., :D].double(), exact_masked, rtol=1e-5, atol=1e-5)
    assert buffer[..., D:].isnan().all()


@pytest.mark.parametrize("blocks_per_strip, stages", [(2, 2), (3, 3)])
def test_forward_strips_of_several_blocks(monkeypatch, blocks_per_strip, stages):
    """Strips that end inside the map and a ragged last strip (21 rows: 6 strips of 4, the last of
    one row; 4 of 6, the last of 3), on the prefix and out= paths."""
    forward_in_strips(monkeypatch, blocks_per_strip, stages)
    assert_forward_matches_the_reference(N=21, D=96, DP=40, seed=blocks_per_strip)


@pytest.mark.parametrize("D, DP, chunk, strips, mask_form, with_bias", [
    # fp32's warp-wide chunks: 128 columns, 3 of the patches (the last of 44), 1 of the prefix
    (300, 40, None, False, "sigmoid", True),
    (96, 40, 32, False, "logit", False),  # 3 chunks of the patches, 2 of the prefix (the last of 8)
    (40, 96, 32, True, "sigmoid", False),  # a prefix wider than the patches; in strips of 2 blocks of 2 rows
])
def test_forward_rows_in_column_chunks(monkeypatch, D, DP, chunk, strips, mask_form, with_bias):
    """The forward reading its rows in chunks of columns (tune_seed_mask's variant): the launcher's
    warp-wide chunks, or ``chunk`` columns, in blocks of 8 rows (21 rows: the last block of 5)."""
    if strips:
        forward_in_strips(monkeypatch, blocks_per_strip=2, stages=2)
    else:
        monkeypatch.setattr(seed_mask_module, "_forward_blocks", lambda d, dp: (8, next_power_of_2(max(d, dp)), 4))
    monkeypatch.setattr(seed_mask_module, "_forward_chunk",
                        seed_mask_module._warp_wide_chunk if chunk is None else lambda d, dp, size: chunk)
    assert_forward_matches_the_reference(N=21, D=D, DP=DP, seed=D, mask_form=mask_form, with_bias=with_bias)


@pytest.mark.parametrize("D, chunk, mask_form, with_bias, upstream", [
    (300, None, "sigmoid", True, "both"),  # fp32's warp-wide chunks: 128 columns, 3 (the last of 44)
    (100, 32, "logit", False, "both"),  # 4 chunks, the most the kernel accumulates, the last of 4
    (96, 32, "sigmoid", True, "logits"),  # the logits' gradient alone
    (64, 64, "sigmoid", False, "masked"),  # one chunk; grad masked alone
])
def test_backward_rows_in_column_chunks(monkeypatch, D, chunk, mask_form, with_bias, upstream, assert_within_rule):
    """The backward reading its rows in chunks of columns (tune_seed_mask's variant): the launcher's
    warp-wide chunks, or ``chunk`` columns, in blocks of 4 rows, 2 blocks a program (21 rows: 3
    programs a batch row, the last with one row), against the reference's gradients in fp32. With a
    prefix, so that grad masked (a view of the decoder input's gradient) has other strides than the
    patches."""
    monkeypatch.setattr(seed_mask_module, "_backward_chunk",
                        seed_mask_module._warp_wide_backward_chunk if chunk is None else lambda d, size: chunk)
    monkeypatch.setattr(seed_mask_module, "_backward_blocks", lambda d: (4, next_power_of_2(d), 4))
    monkeypatch.setattr(seed_mask_module, "_rows_per_program", lambda batch, n, block_n, device: 2 * block_n)
    B, N, DP = 2, 21, 8
    patches, classifier, bias, prefix = inputs(B, N, D, prefix_dim=DP, seed=D)
    generator = torch.Generator(DEVICE).manual_seed(D)
    upstream_grads = {0: torch.randn(B, N, generator=generator, device=DEVICE),
                      1: torch.randn(B, N, DP + D, generator=generator, device=DEVICE)}
    chosen = {"both": (0, 1), "logits": (0,), "masked": (1,)}[upstream]

    def input_grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (patches, classifier, bias)][:3 if with_bias else 2]
        outputs = fn(*leaves, *([] if with_bias else [None]), prefix.to(dtype))
        return torch.autograd.grad([outputs[i] for i in chosen], leaves, [upstream_grads[i].to(dtype) for i in chosen])

    exact = input_grads(reference(mask_form, with_bias), torch.float64)
    theirs = input_grads(reference(mask_form, with_bias), torch.float32)
    ours = input_grads(fused(mask_form, with_bias), torch.float32)
    for name, a, b, c in zip(("patches", "classifier", "bias"), ours, theirs, exact):
        summed = name != "patches"  # over the N patches
        assert_within_rule(a, b, c, 1e-6 * (N ** 0.5 if summed else 1.0), f"grad {name}")


def test_warp_wide_chunks_at_the_model_sizes():
    """A warp's 16-byte loads span 256 columns in bf16 and 128 in fp32; more than 8 chunks widen them."""
    chunk = seed_mask_module._warp_wide_chunk
    assert (chunk(768, 768, 2), chunk(768, 0, 4), chunk(64, 8, 2)) == (256, 128, 64)
    assert (chunk(8192, 0, 2), chunk(300, 0, 2)) == (1024, 256)
    backward_chunk = seed_mask_module._warp_wide_backward_chunk  # at most 4 chunks
    assert (backward_chunk(768, 2), backward_chunk(768, 4), backward_chunk(1536, 2)) == (256, 256, 512)


def test_a_forward_strip_ends_where_it_should(monkeypatch):
    """With one program a batch row launched, only the first strip (6 rows) is written."""
    forward_in_strips(monkeypatch, blocks_per_strip=3, stages=2)
    monkeypatch.setattr(seed_mask_module, "cdiv", lambda a, b: 1)  # the launcher's grid: (B, 1)
    B, N, D = 2, 21, 64
    patches, classifier, bias, _ = inputs(B, N, D)
    exact_logits, exact_masked = seed_mask_reference(patches.double(), classifier.double(), bias.double())
    buffer = torch.full((B, N, D), float("nan"), device=DEVICE)
    logits, _ = seed_mask(patches, classifier, buffer, bias=bias)  # logits: torch.empty, NaN here
    torch.testing.assert_close(logits[:, :6].double(), exact_logits[:, :6], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(buffer[:, :6].double(), exact_masked[:, :6], rtol=1e-5, atol=1e-5)
    assert logits[:, 6:].isnan().all() and buffer[:, 6:].isnan().all()


def test_a_forward_of_more_row_blocks_than_a_grid_holds_walks_strips(monkeypatch):
    """Where N's blocks of rows outnumber what CUDA's grid takes in its second dimension (65,535;
    4 here), each program walks a strip of blocks: 21 rows in blocks of 2 take 4 programs of 6 rows."""
    monkeypatch.setattr(seed_mask_module, "MAX_GRID_Y", 4)
    monkeypatch.setattr(seed_mask_module, "_forward_blocks", lambda d, dp: (2, next_power_of_2(max(d, dp)), 4))
    grids, launch = [], seed_mask_module.launcher

    class RecordingLauncher:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            grids.append(grid)
            return launch(self.kernel)[grid]

    monkeypatch.setattr(seed_mask_module, "launcher", RecordingLauncher)
    assert_forward_matches_the_reference(N=21, D=96, DP=40, seed=5)
    assert grids == [(2, 4), (2, 4)]  # with a prefix, and into out=


def test_backward_programs_and_sum_tiles_on_an_h200(monkeypatch):
    """What the launchers choose at B = 8, D = 768 on an H200's 132 SMs: 57 and 65 backward programs
    a batch row at N = 900 and 3600, whose partial sums the summing kernel loads in one tile each."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    block_n = seed_mask_module._backward_blocks(768)[0]
    for n, splits, sum_tile in ((900, 57, (64, 64)), (3600, 65, (128, 32))):
        rows = seed_mask_module._rows_per_program(8, n, block_n, torch.device("cuda"))
        assert -(-n // rows) == splits
        assert seed_mask_module._sum_blocks(splits, 768) == sum_tile
    assert seed_mask_module._sum_blocks(300, 768) == (128, 32)  # more splits than a tile: several loads
    assert seed_mask_module._sum_blocks(3, 64) == (16, 64)


def test_prefix_of_another_dtype_is_converted_as_it_is_copied():
    """Under autocast z_v is bf16 while the fused patches are fp32: the output is fp32, as in PyTorch."""
    B, N, D, DP = 2, 7, 64, 32
    patches, classifier, bias, _ = inputs(B, N, D)
    prefix = torch.randn(B, N, DP, device=DEVICE).bfloat16().requires_grad_()
    logits, out = seed_mask(patches, classifier, bias=bias.bfloat16(), prefix=prefix)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[..., :DP], prefix.float())
    exact_logits, exact_masked = seed_mask_reference(patches.double(), classifier.double(), bias.bfloat16().double())
    torch.testing.assert_close(out[..., DP:].double(), exact_masked, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert prefix.grad.dtype == torch.bfloat16 and torch.equal(prefix.grad, torch.ones_like(prefix))


def test_without_bias_and_with_one_output_used():
    B, N, D = 2, 9, 64
    patches, classifier, _, _ = inputs(B, N, D)
    for pick in (0, 1):
        leaves = [t.clone().requires_grad_() for t in (patches, classifier)]
        exact = [t.double().detach().requires_grad_() for t in (patches, classifier)]
        seed_mask(*leaves)[pick].sum().backward()
        seed_mask_reference(*exact)[pick].sum().backward()
        for ours, ref in zip(leaves, exact):
            torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-5, atol=1e-5)


def test_out_writes_into_the_decoder_buffer():
    B, N, D = 2, 13, 96
    patches, classifier, bias, _ = inputs(B, N, D)
    buffer = torch.full((B, N, 2 * D + 3), float("nan"), device=DEVICE)
    logits, result = seed_mask(patches, classifier, buffer[..., D:], bias=bias)
    exact_logits, exact_masked = seed_mask_reference(patches.double(), classifier.double(), bias.double())
    assert result.data_ptr() == buffer[..., D:].data_ptr()
    torch.testing.assert_close(buffer[..., D: 2 * D].double(), exact_masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.double(), exact_logits, rtol=1e-5, atol=1e-5)
    assert buffer[..., :D].isnan().all() and buffer[..., 2 * D:].isnan().all()  # nothing else touched
    with pytest.raises(ValueError, match="for inference"):
        seed_mask(patches.requires_grad_(), classifier, buffer[..., D:])


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "fallback"])
def test_out_may_share_memory_with_the_inputs(monkeypatch, kernels):
    """In place, or a view of the same buffer shifted by a batch row: the result is the op's on the
    inputs as they were before the call."""
    if not kernels:
        monkeypatch.setattr(op_registry, "kernel_can_run", lambda tensor: False)
    B, N, D = 2, 7, 12
    for layout in ("in place", "shifted rows", "classifier in out"):
        buffer = torch.randn(B + 1, N, D, device=DEVICE)
        out = buffer[1:]
        patches = {"in place": out, "shifted rows": buffer[:-1]}.get(layout, torch.randn(B, N, D, device=DEVICE))
        classifier = out[0, :B] if layout == "classifier in out" else torch.randn(B, D, device=DEVICE)
        exact_logits, exact_masked = seed_mask_reference(patches.double(), classifier.double())  # before the call
        logits, result = seed_mask(patches, classifier, out)
        assert result is out
        torch.testing.assert_close(out.double(), exact_masked, rtol=1e-5, atol=1e-5, msg=layout)
        torch.testing.assert_close(logits.double(), exact_logits, rtol=1e-5, atol=1e-5, msg=layout)


def test_out_with_elements_that_share_memory_is_an_error():
    patches, classifier, _, _ = inputs(2, 7, 12)
    for out in (torch.zeros(2, 1, 12, device=DEVICE).expand(2, 7, 12),
                torch.zeros(2 * 7 * 6 + 6, device=DEVICE).as_strided((2, 7, 12), (42, 6, 1))):
        with pytest.raises(ValueError, match="has elements that may share memory"):
            seed_mask(patches, classifier, out)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "fallback"])
def test_out_made_in_inference_mode_is_written_only_there(monkeypatch, kernels):
    """As PyTorch's in-place ops: an inference tensor refuses writes outside inference mode, on both paths."""
    if not kernels:
        monkeypatch.setattr(op_registry, "kernel_can_run", lambda tensor: False)
    patches, classifier, _, _ = inputs(2, 7, 12)
    with torch.inference_mode():
        buffer = torch.full((2, 7, 24), float("nan"), device=DEVICE)
    with pytest.raises(RuntimeError, match="made under torch.inference_mode"):
        seed_mask(patches, classifier, buffer[..., 12:])
    assert buffer.isnan().all()
    with torch.inference_mode():
        logits, out = seed_mask(patches, classifier, buffer[..., 12:])
    exact_logits, exact_masked = seed_mask_reference(patches.double(), classifier.double())
    torch.testing.assert_close(out.double(), exact_masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.double(), exact_logits, rtol=1e-5, atol=1e-5)


def test_an_empty_out_is_taken_with_a_zero_stride():
    patches, classifier, _, _ = inputs(2, 0, 12)
    out = torch.zeros(1, 0, 12, device=DEVICE).expand(2, 0, 12)  # strides (0, 12, 1): no elements to share
    logits, result = seed_mask(patches, classifier, out)
    assert result is out and logits.shape == (2, 0)


def test_out_counts_as_an_in_place_write_for_autograd():
    """A tensor autograd saved for a backward, then overwritten through out=: the backward refuses it
    (as after any in-place op) instead of computing with the new values."""
    patches, classifier, _, _ = inputs(2, 7, 12)
    weight = torch.ones(2, 7, 12, device=DEVICE, requires_grad=True)
    buffer = torch.randn(2, 7, 12, device=DEVICE)
    loss = (weight * buffer).sum()  # saves buffer
    seed_mask(patches, classifier, buffer)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_compiled_function_writes_into_out_without_graph_breaks():
    B, N, D = 2, 9, 64
    patches, classifier, bias, _ = inputs(B, N, D)
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"

    def fill(patches, classifier, bias, buffer):
        logits, _ = seed_mask(patches, classifier, buffer[..., D:], bias=bias)
        return logits * 2

    compiled = torch.compile(fill, fullgraph=True, backend=backend)
    eager_buffer, compiled_buffer = (torch.full((B, N, 2 * D), float("nan"), device=DEVICE) for _ in range(2))
    with torch.no_grad():
        expected, got = fill(patches, classifier, bias, eager_buffer), compiled(patches, classifier, bias, compiled_buffer)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_buffer, eager_buffer, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert compiled_buffer[..., :D].isnan().all() and not compiled_buffer[..., D:].isnan().any()


def test_non_contiguous_inputs():
    B, N, D = 2, 11, 64
    wide = torch.randn(B, N, 3 * D, device=DEVICE)
    patches = wide[..., D: 2 * D]  # row stride 3D
    transposed = torch.randn(B, D, N, device=DEVICE).transpose(1, 2)  # channel stride N
    classifier = torch.randn(D, B, device=DEVICE).t()
    for p in (patches, transposed):
        logits, masked = seed_mask(p, classifier)
        exact_logits, exact_masked = seed_mask_reference(p.double(), classifier.double())
        torch.testing.assert_close(logits.double(), exact_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(masked.double(), exact_masked, rtol=1e-5, atol=1e-5)


def test_cpu_without_the_interpreter_falls_back_to_pytorch(monkeypatch):
    monkeypatch.setattr(op_registry, "INTERPRETED", False)
    monkeypatch.setattr(torch.ops.restr_fast, "seed_mask", None)  # the kernel must not be called
    monkeypatch.setattr(seed_mask_module, "_seed_mask_eager", None)
    patches, classifier, bias, prefix = (t.cpu() for t in inputs(2, 5, 64, prefix_dim=8))
    logits, out = seed_mask(patches, classifier, bias=bias, prefix=prefix)
    exact_logits, exact_masked = seed_mask_reference(patches, classifier, bias)
    torch.testing.assert_close(logits, exact_logits)
    torch.testing.assert_close(out, torch.cat([prefix, exact_masked], -1))


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "fallback"])
def test_results_take_the_patches_dtype_whatever_the_bias_and_prefix(monkeypatch, kernels):
    """The kernels and the PyTorch fallback return the same dtypes: fp16 patches with an fp32 bias and
    prefix give fp16 logits and an fp16 decoder input."""
    if not kernels:
        monkeypatch.setattr(op_registry, "kernel_can_run", lambda tensor: False)
    patches, classifier, bias, prefix = inputs(2, 5, 64, prefix_dim=8)
    logits, out = seed_mask(patches.half(), classifier.half(), bias=bias, prefix=prefix)
    assert logits.dtype == out.dtype == torch.float16
    exact_logits, exact_masked = seed_mask_reference(patches.half().double(), classifier.half().double(), bias.double())
    torch.testing.assert_close(logits.double(), exact_logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.double(), torch.cat([prefix.half().double(), exact_masked], -1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "fallback"])
def test_autocast_does_not_lower_the_computation(monkeypatch, kernels):
    """Under bf16 autocast, fp32 inputs are scored and masked in fp32 on both paths: the fallback's
    einsum is not run in bf16 (which put these logits up to 6.4e-3 off)."""
    if not kernels:
        monkeypatch.setattr(op_registry, "kernel_can_run", lambda tensor: False)
    patches, classifier, bias, prefix = inputs(2, 9, 64, prefix_dim=8)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        logits, out = seed_mask(patches, classifier, bias=bias, prefix=prefix)
    assert logits.dtype == out.dtype == torch.float32
    exact_logits, exact_masked = seed_mask_reference(patches.double(), classifier.double(), bias.double())
    torch.testing.assert_close(logits.double(), exact_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), torch.cat([prefix.double(), exact_masked], -1), rtol=1e-5, atol=1e-5)


def test_the_kernels_take_rows_that_32_bit_offsets_reach_and_no_wider_rows():
    """Wider rows (patches or prefix), or rows spread over 2^31 elements or more (the kernels' row
    offsets are int32), take the PyTorch fallback. Shapes and strides only: meta tensors."""
    def tensor(shape, strides=None):
        strides = strides or torch.empty(shape, device="meta").stride()
        return torch.empty_strided(shape, strides, device="meta")

    def fits(patches, prefix, out):
        return seed_mask_module._kernel_fits(patches, None, prefix, out)

    assert fits(tensor((8, 3600, 768)), tensor((8, 3600, 768)), None)
    assert not fits(tensor((1, 3, 16), (3 * 2 ** 30, 2 ** 30, 1)), None, None)
    assert fits(tensor((1, 2, 16), (3 * 2 ** 30, 2 ** 30 - 1, 1)), None, None)
    assert not fits(tensor((2, 3, 64)), None, tensor((2, 3, 64), (3 * 2 ** 30, 2 ** 30, 1)))  # out=
    assert not fits(tensor((1, 2 ** 21, 768)), tensor((1, 2 ** 21, 768)), None)  # [prefix, masked] rows
    assert fits(tensor((1, 2 ** 21, 768)), None, None)
    assert not fits(tensor((1, 4, seed_mask_module.MAX_D + 1)), None, None)
    assert not fits(tensor((1, 4, 64)), tensor((1, 4, seed_mask_module.MAX_D + 1)), None)
    assert not fits(tensor((1, 0, 64)), None, None)


def test_meta_tensors_give_the_shapes_and_dtypes():
    """Shape inference without memory (e.g. counting a model's compute): the PyTorch fallback, on meta."""
    patches, classifier = torch.empty(2, 5, 64, device="meta"), torch.empty(2, 64, device="meta")
    prefix = torch.empty(2, 5, 8, device="meta", dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, out = seed_mask(patches, classifier, bias=torch.empty(2, device="meta"), prefix=prefix)
    assert (logits.shape, out.shape, logits.dtype, out.dtype) == ((2, 5), (2, 5, 72), torch.float32, torch.float32)


def test_a_wide_prefix_takes_the_fallback(monkeypatch):
    monkeypatch.setattr(seed_mask_module, "_seed_mask_eager", lambda *args: pytest.fail("a kernel was called"))
    patches, classifier, bias, _ = inputs(1, 3, 16)
    prefix = torch.randn(1, 3, seed_mask_module.MAX_D + 1, device=DEVICE)
    logits, out = seed_mask(patches, classifier, bias=bias, prefix=prefix)
    exact_logits, exact_masked = seed_mask_reference(patches, classifier, bias)
    torch.testing.assert_close(out, torch.cat([prefix, exact_masked], -1))


def test_float64_runs_in_pytorch(monkeypatch):
    monkeypatch.setattr(seed_mask_module, "_seed_mask_eager", lambda *args: pytest.fail("a kernel was called"))
    patches, classifier, bias, prefix = (t.double() for t in inputs(2, 5, 64, prefix_dim=8))
    grads = [torch.randn(2, 5, dtype=torch.float64, device=DEVICE),
             torch.randn(2, 5, 8 + 64, dtype=torch.float64, device=DEVICE)]
    fused_out, fused_grads = run(fused("sigmoid"), [patches, classifier, bias, prefix], grads)
    exact_out, exact_grads = run(reference("sigmoid"), [patches, classifier, bias, prefix], grads)
    for ours, exact in zip(fused_out + fused_grads, exact_out + exact_grads):
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, exact)


def test_gradients_are_not_differentiable_again_and_absent_ones_are_none():
    """A gradient taken with create_graph=True raises (the kernels' gradients have no graph of their
    own), rather than giving second derivatives without the op's terms: with a path to a weight
    outside the op, such a second derivative came out wrong without a word. An output whose
    gradient never arrives backpropagates nothing."""
    patches, classifier, _, _ = inputs(2, 5, 64)
    lift = torch.eye(64, device=DEVICE, requires_grad=True)
    patches.requires_grad_()
    logits, masked = seed_mask(patches @ lift, classifier)
    with pytest.raises(RuntimeError, match="no second derivative: a gradient taken with create_graph=True"):
        torch.autograd.grad(masked.square().sum(), patches, create_graph=True)

    class NoGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return None

    other = torch.ones(3, requires_grad=True)
    logits, masked = seed_mask(patches, classifier)
    loss = NoGradient.apply(logits).sum() + NoGradient.apply(masked).sum() + other.sum()
    assert torch.autograd.grad(loss, [patches, other], allow_unused=True)[0] is None


def test_compiled_function_traces_through_the_op_without_graph_breaks():
    B, N, D = 2, 9, 64
    patches, classifier, bias, prefix = inputs(B, N, D, prefix_dim=16)

    def head(patches, classifier, bias, prefix):
        logits, out = seed_mask(patches, classifier, bias=bias, prefix=prefix)
        return logits.sigmoid(), out * 2

    backend = "inductor" if DEVICE == "cuda" else "aot_eager"  # inductor has no CPU path for Triton ops
    compiled = torch.compile(head, fullgraph=True, backend=backend)
    grads = [torch.randn(B, N, device=DEVICE), torch.randn(B, N, 16 + D, device=DEVICE)]
    eager_out, eager_grads = run(head, [patches, classifier, bias, prefix], grads)
    comp_out, comp_grads = run(compiled, [patches, classifier, bias, prefix], grads)
    for a, b in zip(eager_out + eager_grads, comp_out + comp_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, error, message", [
    (lambda z, c: seed_mask(z[0], c), ValueError, r"patches must be a \(B, N, D\) tensor"),
    (lambda z, c: seed_mask(z, c[:1]), ValueError, r"classifier must have shape \(B, D\) = \(2, 64\)"),
    (lambda z, c: seed_mask(z, c[:, :63]), ValueError, r"classifier must have shape"),
    (lambda z, c: seed_mask(z, c[0]), ValueError, r"classifier must have shape"),
    (lambda z, c: seed_mask(z.long(), c.long()), TypeError, "supports float32, float16 and bfloat16"),
    (lambda z, c: seed_mask(z, c.double()), TypeError, "classifier has dtype torch.float64"),
    (lambda z, c: seed_mask(z, c.half()), TypeError, "cast them to one dtype"),
    (lambda z, c: seed_mask(z, c, bias=c[:, 0:1]), ValueError, r"bias must have shape \(2,\)"),
    (lambda z, c: seed_mask(z, c, prefix=z[:1]), ValueError, r"prefix must have shape \(B, N, Dp\)"),
    (lambda z, c: seed_mask(z, c, torch.empty(2, 5, 63)), ValueError, r"out must have shape \(B, N, >=D\)"),
    (lambda z, c: seed_mask(z, c, torch.empty(2, 5, 64), prefix=z), ValueError, "give either out or prefix, not both"),
    (lambda z, c: seed_mask(z, c, torch.empty(2, 5, 128)[..., ::2]), ValueError, "out must have unit stride"),
    (lambda z, c: seed_mask(z, c, mask_form="tanh"), ValueError, "mask_form must be"),
    (lambda z, c: seed_mask(z[..., :0], c[:, :0]), ValueError, "patches must have at least one channel"),
])
def test_bad_inputs_are_named(call, error, message):
    patches, classifier, _, _ = inputs(2, 5, 64)
    with pytest.raises(error, match=message):
        call(patches.cpu(), classifier.cpu())


@pytest.mark.gpu(reason="needs a CUDA GPU to mix devices")
def test_mixed_devices_are_named():
    patches, classifier, _, _ = inputs(2, 5, 64)
    with pytest.raises(ValueError, match="classifier is on cpu"):
        seed_mask(patches, classifier.cpu())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, N, D, DP", [(2, 7, 96, 32), (1, 61, 300, 0)])
@pytest.mark.parametrize("mask_form", ["sigmoid", "logit"])
def test_low_precision_at_small_sizes(dtype, B, N, D, DP, mask_form, assert_within_rule, assert_rounded_once):
    """Loads, fp32 arithmetic and stores in bf16/fp16, on the CPU too (under the interpreter)."""
    tensors = inputs(B, N, D, dtype=dtype, prefix_dim=DP, seed=N + D)
    generator = torch.Generator(DEVICE).manual_seed(2)
    grads = [torch.randn(B, N, generator=generator, device=DEVICE, dtype=dtype),
             torch.randn(B, N, DP + D, generator=generator, device=DEVICE, dtype=dtype)]
    assert_results_match_the_reference(tensors, grads, mask_form, True, 1e-3, assert_within_rule, assert_rounded_once)


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N", [900, 3600])
@pytest.mark.parametrize("mask_form", ["sigmoid", "logit"])
def test_low_precision_at_real_size_on_gpu(dtype, N, mask_form, assert_within_rule, assert_rounded_once):
    B, D, DP = 8, 768, 768
    tensors = inputs(B, N, D, dtype=dtype, prefix_dim=DP, seed=N)
    grads = [torch.randn(B, N, device=DEVICE, dtype=dtype), torch.randn(B, N, DP + D, device=DEVICE, dtype=dtype)]
    assert_results_match_the_reference(tensors, grads, mask_form, True, 1e-3, assert_within_rule, assert_rounded_once)
