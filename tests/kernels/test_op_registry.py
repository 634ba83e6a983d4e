"""Where and how the kernels run: the interpreter's version check, eager launches."""
import os
import subprocess
import sys
import threading

import pytest
import torch

from restr_fast.kernels import op_registry
from restr_fast.kernels.op_registry import eager_launches, interpreter_incompatibility


@pytest.mark.parametrize("triton_version, numpy_version", [("3.6.0", "2.4.6"), ("3.4.1", "2.4.0rc1")])
def test_old_interpreter_with_new_numpy_is_refused_with_the_fix(triton_version, numpy_version):
    problem = interpreter_incompatibility(triton_version, numpy_version)
    assert problem is not None and "numpy<2.4" in problem and "triton>=3.7" in problem


@pytest.mark.parametrize("triton_version, numpy_version",
                         [("3.6.0", "2.3.5"), ("3.7.0", "2.4.6"), ("3.8.0", "2.4.6"), ("4.0.0", "1.26.4")])
def test_working_combinations_pass(triton_version, numpy_version):
    assert interpreter_incompatibility(triton_version, numpy_version) is None


@pytest.mark.parametrize("value, interpreted", [("true", True), ("0", False)])
def test_the_interpreter_is_detected_as_triton_reads_the_variable(value, interpreted, request):
    """Triton interprets for any true value of TRITON_INTERPRET; so must the dispatch, or CPU tensors
    would take the PyTorch fallback while kernel tests believe they ran the kernels."""
    if interpreted:
        request.getfixturevalue("interpreter_can_run")
    code = "import triton; from restr_fast.kernels import op_registry; " \
           "print(op_registry.INTERPRETED, bool(triton.knobs.runtime.interpret))"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": value},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(interpreted)] * 2


@pytest.fixture
def device_switches(monkeypatch):
    """Devices that torch.cuda.device was entered and left with, while cuda:0 is the current device."""
    switches = []

    class RecordingDevice:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            switches.append(("enter", str(self.device)))

        def __exit__(self, *exc_info):
            switches.append(("exit", str(self.device)))

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", RecordingDevice)
    return switches


def bare_launches() -> bool:
    """Whether launcher() hands out bare kernels in this thread, where Triton is not interpreted (under
    the interpreter it launches the kernels directly, whatever this says)."""
    return getattr(op_registry._launches, "bare", False)


def test_eager_launches_switch_to_the_tensors_gpu(device_switches):
    assert not bare_launches()
    with eager_launches(torch.device("cuda", 1)):
        assert bare_launches() and device_switches == [("enter", "cuda:1")]
        with eager_launches(torch.device("cuda", 1)):  # nested: both switches undone in order
            pass
        assert bare_launches()
    assert not bare_launches()
    assert device_switches == [("enter", "cuda:1"), ("enter", "cuda:1"), ("exit", "cuda:1"), ("exit", "cuda:1")]


@pytest.mark.parametrize("device", [torch.device("cuda", 0), torch.device("cpu"), None])
def test_eager_launches_stay_on_the_current_device(device_switches, device):
    with eager_launches(device):
        assert bare_launches()
    assert device_switches == [] and not bare_launches()


def test_eager_launches_undo_everything_on_errors(device_switches, monkeypatch):
    with pytest.raises(KeyError):
        with eager_launches(torch.device("cuda", 1)):
            raise KeyError("in the body")
    assert device_switches == [("enter", "cuda:1"), ("exit", "cuda:1")] and not bare_launches()

    def no_gpu():
        raise RuntimeError("no CUDA GPU")

    monkeypatch.setattr(torch.cuda, "current_device", no_gpu)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        with eager_launches(torch.device("cuda", 1)):
            pass
    assert not bare_launches()


def test_eager_launches_are_per_thread():
    seen = []
    with eager_launches():
        thread = threading.Thread(target=lambda: seen.append(bare_launches()))
        thread.start()
        thread.join()
    assert seen == [False]


def test_eager_ops_launch_on_their_tensors_device(monkeypatch):
    """The eager entry points hand their tensors' device to eager_launches, forward and backward."""
    devices = []

    class RecordingLaunches(op_registry.eager_launches):
        def __init__(self, device=None):
            devices.append(device)
            super().__init__(device)

    monkeypatch.setattr(op_registry, "eager_launches", RecordingLaunches)
    op = op_registry.eager_autograd(lambda x: x * 2, lambda ctx, inputs, output: None, lambda ctx, grad: grad * 2)
    x = torch.ones(3, requires_grad=True)
    op(x).sum().backward()
    assert devices == [x.device, x.device]


@pytest.mark.skipif(not op_registry.INTERPRETED, reason="checks launches on Triton's interpreter (TRITON_INTERPRET=1)")
def test_interpreted_kernels_can_be_called_from_several_threads():
    """The interpreter patches triton.language for each launch, for the whole process: launches from
    two threads at once failed now and then (2 of 30 calls) until they were made one at a time."""
    from restr_fast.kernels import seed_mask, upsample_linear_act

    generator = torch.Generator().manual_seed(0)
    patches, classifier = torch.randn(4, 64, 32, generator=generator), torch.randn(4, 32, generator=generator)
    x, weight = torch.randn(1, 3, 5, 16, generator=generator), torch.randn(8, 16, generator=generator)
    calls = [lambda: seed_mask(patches, classifier), lambda: (upsample_linear_act(x, weight),)]
    expected = [call() for call in calls]
    errors, mismatches = [], []
    start = threading.Barrier(2)

    def run(t):
        start.wait()
        for i in range(40):
            try:
                results = calls[(t + i) % 2]()
            except Exception as error:  # reported in the main thread
                errors.append(repr(error)[:200])
                continue
            if not all(torch.equal(a, b) for a, b in zip(results, expected[(t + i) % 2])):
                mismatches.append(i)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not mismatches
