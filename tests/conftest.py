"""Shared test setup. Triton's interpreter must be chosen before triton is first imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
import triton.runtime.interpreter as triton_interpreter  # noqa: E402

from restr_fast import get_config  # noqa: E402


def convert_bf16_as_a_gpu_does_in_the_interpreter() -> None:
    """Make Triton's interpreter convert between fp32 and bf16 as a GPU does: fp32 to the nearest bf16
    (ties to even), and bf16 to fp32 exactly.

    The interpreter (Triton 3.8) truncates fp32 toward zero instead: every bf16 value a kernel stores
    is then biased, and the bias compounds through a model: under bf16 autocast the fast restr-tiny's
    gradients came up to 8.4x further from fp64's than the reference model's (RMS error of a
    parameter's gradient), against at most 2.2x with rounding to nearest. It also reads 254 of the
    65,536 bf16 values wrong, all subnormal (below 1.2e-38). With this, the CPU suite checks the
    conversions the kernels get on a GPU; tests/kernels/test_interpreter_rounding.py fails where it
    could not be applied.
    """
    interpreter_conversion = getattr(triton_interpreter, "_convert_float", None)
    if interpreter_conversion is None or getattr(interpreter_conversion, "converts_bf16_as_a_gpu_does", False):
        return

    def convert_float(data, input_dtype, output_dtype, rounding_mode):
        if (input_dtype == tl.float32 and output_dtype == tl.bfloat16
                and rounding_mode in (None, triton_interpreter._ir.ROUNDING_MODE.RTNE)):
            rounded = torch.from_numpy(np.ascontiguousarray(data).view(np.float32)).to(torch.bfloat16)
            return rounded.view(torch.int16).numpy().view(np.uint16).reshape(data.shape)
        if input_dtype == tl.bfloat16 and output_dtype == tl.float32:  # bf16 is fp32's upper 16 bits
            return (np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16).reshape(data.shape)
        return interpreter_conversion(data, input_dtype, output_dtype, rounding_mode)

    convert_float.converts_bf16_as_a_gpu_does = True
    triton_interpreter._convert_float = convert_float


if triton.knobs.runtime.interpret:
    convert_bf16_as_a_gpu_does_in_the_interpreter()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, with the mark's reason, where the machine has fewer CUDA GPUs than
    they need; where it has them, they run first, so that a GPU session's time bound (BENCHMARKS.md)
    cuts tests that the CPU runs too rather than the ones only a GPU can. (A module's fixtures are
    then set up once for its GPU tests and again for the others.)"""
    gpus = torch.cuda.device_count()
    for item in items:
        mark = item.get_closest_marker("gpu")
        devices = mark.kwargs.get("devices", 1) if mark is not None else 0
        if gpus < devices:
            reason = mark.kwargs.get("reason") or (mark.args[0] if mark.args else None)
            item.add_marker(pytest.mark.skip(reason=reason or f"needs {devices} CUDA GPU(s)"))
    if gpus:
        items.sort(key=lambda item: item.get_closest_marker("gpu") is None)  # stable: otherwise as collected


@pytest.fixture
def interpreter_can_run():
    """Skips, with the reason, a test that starts Triton's interpreter in a subprocess where these
    versions cannot run it (a GPU machine's Triton before 3.7 with numpy 2.4 or later)."""
    from restr_fast.kernels.op_registry import interpreter_incompatibility

    if problem := interpreter_incompatibility(triton.__version__, np.__version__):
        pytest.skip(problem)


@pytest.fixture
def tiny_config():
    """A small, fast config: 32x32 images, patch 8, width 32; the auto attention (SDPA on the CPU)."""
    return get_config("restr-tiny", image_size=32, vision_dim=32, vision_depth=2, vision_heads=2,
                      vocab_size=50, word_dim=24, text_depth=2, text_heads=2, text_mlp_dim=48,
                      dim=32, fusion_heads=2, fusion_depth=2)


@pytest.fixture
def make_inputs():
    """make_inputs(config, batch_size=2, height=None, width=None, seed=0) -> (images, tokens)."""
    return random_inputs


def random_inputs(config, batch_size=2, height=None, width=None, seed=0):
    """Random images in [-1, 1] and token rows with 1..max_words words, left-padded."""
    generator = torch.Generator().manual_seed(seed)
    height = height or config.image_size
    width = width or config.image_size
    images = torch.rand(batch_size, config.in_chans, height, width, generator=generator) * 2 - 1
    tokens = torch.randint(1, config.vocab_size, (batch_size, config.max_words), generator=generator)
    for row in range(batch_size):
        n_words = int(torch.randint(1, config.max_words + 1, (1,), generator=generator))
        tokens[row, : config.max_words - n_words] = 0
    return images, tokens
