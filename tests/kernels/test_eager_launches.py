"""Eager calls of the kernels launch them directly, not through torch's higher-order op.

``wrap_triton(kernel)[grid](...)`` outside torch.compile dispatches each launch as a higher-order
op: hundreds of microseconds of host time, and an entry in torch's kernel side table per launch,
never freed. Under the interpreter the launcher always hands out bare kernels, so this runs in a
subprocess without ``TRITON_INTERPRET``, on CPU tensors, with every kernel's launch replaced by a
recorder: it checks which kernels each entry point launches, and that none of them went through
the side table. The kernels' outputs are never computed; only the dispatch is under test.
"""
import json
import os
import subprocess
import sys

PROBE = r"""
import functools, importlib, json, torch
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from triton.runtime.jit import JITFunction

op_registry = importlib.import_module("restr_fast.kernels.op_registry")
assert not op_registry.INTERPRETED
op_registry.kernel_can_run = lambda tensor: True  # CPU tensors take the kernels' path
modules = {name: importlib.import_module(f"restr_fast.kernels.{name}") for name in ("seed_mask", "decoder", "upsample_matmul")}
launches = []
for module in modules.values():
    for name, kernel in vars(module).items():
        if isinstance(kernel, JITFunction) and name.endswith("_kernel"):
            kernel.run = functools.partial(lambda name, *args, **kwargs: launches.append(name), name)

from restr_fast.kernels import fused_decoder, seed_mask, upsample_linear_act


def leaves(*shapes, dtype=torch.float32):
    return [torch.randn(*shape, dtype=dtype).requires_grad_() for shape in shapes]


def forward_backward(outputs):
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
    torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])


def seed_mask_train():
    patches, classifier, bias, prefix = leaves((2, 7, 96), (2, 96), (2,), (2, 7, 32))
    forward_backward(seed_mask(patches, classifier, bias=bias, prefix=prefix))


def seed_mask_inference():
    with torch.no_grad():
        seed_mask(*leaves((2, 7, 96), (2, 96)))


def seed_mask_out():
    patches, classifier = (t.detach() for t in leaves((2, 7, 96), (2, 96)))
    seed_mask(patches, classifier, torch.empty(2, 7, 128)[..., 32:])


def decoder_train(dtype):
    x, w1, w2, head = leaves((2, 3, 5, 48), (24, 48), (12, 24), (1, 12), dtype=dtype)
    forward_backward(fused_decoder(x, [w1, w2], head))


def block_train():
    forward_backward(upsample_linear_act(*leaves((2, 3, 5, 12), (6, 12))))


def fused_products_decoder_train():
    modules["decoder"].FUSED_PRODUCTS = True
    try:
        decoder_train(torch.bfloat16)
    finally:
        modules["decoder"].FUSED_PRODUCTS = False


cases = {"seed_mask_train": seed_mask_train, "seed_mask_inference": seed_mask_inference,
         "seed_mask_out": seed_mask_out, "decoder_train": functools.partial(decoder_train, torch.float32),
         "block_train": block_train, "fused_products_decoder_train": fused_products_decoder_train}
report = {}
for case, run in cases.items():
    launches.clear()
    entries = len(kernel_side_table.constant_args)
    run()
    report[case] = dict(launches=sorted(launches), side_table_entries=len(kernel_side_table.constant_args) - entries)
kernel = modules["seed_mask"]._seed_mask_fwd_kernel
with op_registry.eager_launches():
    report["bare_inside"] = op_registry.launcher(kernel) is kernel
report["wrapped_outside"] = op_registry.launcher(kernel) is not kernel
print(json.dumps(report))
"""

EXPECTED_LAUNCHES = {
    "seed_mask_train": ["_seed_mask_bwd_kernel", "_seed_mask_bwd_sum_kernel", "_seed_mask_fwd_kernel"],
    "seed_mask_inference": ["_seed_mask_fwd_kernel"],
    "seed_mask_out": ["_seed_mask_fwd_kernel"],
    # block 2's activation (again in its backward, for the weight's gradient), the head, both backwards
    "decoder_train": ["_upsample_act_bwd_kernel", "_upsample_act_bwd_kernel", "_upsample_act_fwd_kernel",
                      "_upsample_act_fwd_kernel", "_upsample_act_head_fwd_kernel"],
    "block_train": ["_upsample_act_bwd_kernel", "_upsample_act_fwd_kernel"],
    "fused_products_decoder_train": ["_upsample_act_bwd_kernel", "_upsample_act_bwd_kernel",
                                     "_upsample_act_head_fwd_kernel", "_upsample_act_matmul_kernel",
                                     "_upsample_act_weight_grad_kernel"],
}


def test_eager_calls_launch_bare_kernels():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.pop("bare_inside") and report.pop("wrapped_outside")  # torch.compile still traces launches
    for case, expected in EXPECTED_LAUNCHES.items():
        assert report[case] == dict(launches=expected, side_table_entries=0), case
