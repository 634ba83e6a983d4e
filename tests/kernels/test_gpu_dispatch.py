"""How the kernels are dispatched on a GPU, checked on any machine.

Under Triton's interpreter the ops take another branch (bare kernels, opaque custom ops), so these
run in a subprocess without ``TRITON_INTERPRET``, on CPU tensors, with every kernel's launch
replaced by a recorder, a stand-in Triton driver that names an sm_90 target, and Dynamo told that
Triton can run. The kernels' outputs are never computed; only the dispatch is under test:

- eager calls launch the bare kernels: ``wrap_triton(kernel)[grid](...)`` outside torch.compile
  dispatches each launch as a higher-order op, hundreds of microseconds of host time and an entry
  in torch's kernel side table per launch, never freed;
- ``torch.compile(fullgraph=True)`` traces every op as a ``triton_op`` (no graph break), and
  torch's analysis of each kernel's source finds that it writes its outputs and nothing else (the
  stand-ins passed for absent inputs included), so the compiled graph copies no input.
"""
import json
import os
import subprocess
import sys

import pytest

PRELUDE = r"""
import functools, importlib, json, sys, torch, torch.utils._triton, triton
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction


class StandInDriver:  # what torch's kernel analysis asks of a driver
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


triton.runtime.driver.set_active(StandInDriver())
torch.utils._triton.has_triton = lambda: True  # Dynamo then traces Triton launches as with a GPU
op_registry = importlib.import_module("restr_fast.kernels.op_registry")
assert not op_registry.INTERPRETED
op_registry.kernel_can_run = lambda tensor: True  # CPU tensors take the kernels' path
modules = {name: importlib.import_module(f"restr_fast.kernels.{name}") for name in ("seed_mask", "decoder")}
modules["decoder"].BACKWARD_ON_COLUMN_PAIRS = json.loads(sys.argv[1])  # which backward kernel the decoder runs
launches = []
for module in modules.values():
    for name, kernel in vars(module).items():
        if isinstance(kernel, JITFunction) and name.endswith("_kernel"):
            kernel.run = functools.partial(lambda name, *args, **kwargs: launches.append(name), name)

from restr_fast.kernels import fused_decoder, seed_mask, upsample_linear_act


def leaves(*shapes):
    return [torch.randn(*shape).requires_grad_() for shape in shapes]


def forward_backward(outputs):
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
    torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])


def eager(fn):
    return fn


def seed_mask_train(wrap=eager):
    op = wrap(lambda patches, classifier, bias, prefix: seed_mask(patches, classifier, bias=bias, prefix=prefix))
    forward_backward(op(*leaves((2, 7, 96), (2, 96), (2,), (2, 7, 32))))


def seed_mask_out(wrap=eager):  # inference, into the right part of a buffer
    patches, classifier = (t.detach() for t in leaves((2, 7, 96), (2, 96)))
    with torch.no_grad():
        wrap(lambda patches, classifier, out: seed_mask(patches, classifier, out))(
            patches, classifier, torch.empty(2, 7, 128)[..., 32:])


def decoder_train(wrap=eager):
    op = wrap(lambda x, w1, w2, head: fused_decoder(x, [w1, w2], head))
    forward_backward(op(*leaves((2, 3, 5, 48), (24, 48), (12, 24), (1, 12))))
"""

EAGER_PROBE = PRELUDE + r"""
def seed_mask_inference():
    with torch.no_grad():
        seed_mask(*leaves((2, 7, 96), (2, 96)))


def block_train():
    forward_backward(upsample_linear_act(*leaves((2, 3, 5, 12), (6, 12))))


cases = {"seed_mask_train": seed_mask_train, "seed_mask_inference": seed_mask_inference,
         "seed_mask_out": seed_mask_out, "decoder_train": decoder_train, "block_train": block_train}
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

COMPILE_PROBE = PRELUDE + r"""
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

written = []  # (kernel, the arguments torch finds it writes) of every kernel in the compiled graphs


def record_kernels(graph_module, inputs):
    for node in graph_module.graph.nodes:
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            written.append([kernel.fn.__name__, sorted(node.kwargs["tensors_to_clone"])])
    return make_boxed_func(graph_module.forward)


backend = aot_autograd(fw_compiler=record_kernels, bw_compiler=record_kernels)
report = {}
for case, run in {"seed_mask_train": seed_mask_train, "seed_mask_out": seed_mask_out,
                  "decoder_train": decoder_train}.items():
    launches.clear()
    written.clear()
    run(lambda fn: torch.compile(fn, backend=backend, fullgraph=True))
    report[case] = dict(launches=sorted(launches), written=sorted(written))
print(json.dumps(report))
"""

# what each kernel writes: its outputs (the backward's WEIGHT_PARTIAL only for the head's weight)
WRITTEN = {
    "_seed_mask_fwd_kernel": ["LOGITS", "OUT"],
    "_seed_mask_bwd_kernel": ["GRAD_BIAS_PARTIAL", "GRAD_C_PARTIAL", "GRAD_Z"],
    "_seed_mask_bwd_sum_kernel": ["GRAD_BIAS", "GRAD_C"],
    "_upsample_act_fwd_kernel": ["Y"],
    "_upsample_act_head_fwd_kernel": ["OUT"],
}
# the decoder's backward kernel: lanes on input columns (the default) or on column pairs
BACKWARD_KERNELS = {False: "_upsample_act_bwd_kernel", True: "_upsample_act_bwd_pairs_kernel"}
column_pairs = pytest.mark.parametrize("column_pairs", BACKWARD_KERNELS, ids=["input columns", "column pairs"])


def expected_launches(column_pairs: bool) -> dict:
    backward = BACKWARD_KERNELS[column_pairs]
    return {
        "seed_mask_train": ["_seed_mask_bwd_kernel", "_seed_mask_bwd_sum_kernel", "_seed_mask_fwd_kernel"],
        "seed_mask_inference": ["_seed_mask_fwd_kernel"],
        "seed_mask_out": ["_seed_mask_fwd_kernel"],
        # block 2's activation (again in its backward, for the weight's gradient), the head, both backwards
        "decoder_train": sorted([backward, backward, "_upsample_act_fwd_kernel", "_upsample_act_fwd_kernel",
                                 "_upsample_act_head_fwd_kernel"]),
        "block_train": sorted([backward, "_upsample_act_fwd_kernel"]),
    }


def run_probe(probe: str, column_pairs: bool) -> dict:
    """The JSON report the probe prints last, run without Triton's interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", probe, json.dumps(column_pairs)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@column_pairs
def test_eager_calls_launch_bare_kernels(column_pairs):
    report = run_probe(EAGER_PROBE, column_pairs)
    assert report.pop("bare_inside") and report.pop("wrapped_outside")  # torch.compile still traces launches
    for case, expected in expected_launches(column_pairs).items():
        assert report[case] == dict(launches=expected, side_table_entries=0), case


@column_pairs
def test_compile_traces_every_op_and_copies_no_input(column_pairs):
    report = run_probe(COMPILE_PROBE, column_pairs)
    expected = expected_launches(column_pairs)
    for case in ("seed_mask_train", "seed_mask_out"):
        assert report[case]["written"] == sorted([name, WRITTEN[name]] for name in expected[case]), case
    backward = BACKWARD_KERNELS[column_pairs]  # the head's backward also writes its weight's partial sums
    assert report["decoder_train"]["written"] == sorted(
        [[backward, ["GT", "WEIGHT_PARTIAL"]], [backward, ["GT"]], *([name, WRITTEN[name]] for name in (
            "_upsample_act_fwd_kernel", "_upsample_act_fwd_kernel", "_upsample_act_head_fwd_kernel"))])
    for case, result in report.items():  # the compiled graphs launch what eager calls launch
        assert result["launches"] == expected[case], case
