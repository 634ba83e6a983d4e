"""CUDAGraphed: replays equal eager calls, and a capture leaves other threads free to use the GPU."""
import threading

import pytest
import torch

from restr_fast.cuda_graphs import CUDAGraphed

requires_gpu = pytest.mark.gpu(reason="needs a CUDA GPU (CUDA graphs)")


def test_inputs_must_be_on_a_gpu():
    with pytest.raises(ValueError, match="every input must be a CUDA tensor"):
        CUDAGraphed(lambda x: x + 1)(torch.ones(3))


@requires_gpu
def test_replays_equal_eager_calls_for_each_shape():
    graphed = CUDAGraphed(lambda x, y: x @ y + 1)
    for shape in ((5, 7), (9, 7), (5, 7)):
        for _ in range(2):
            x, y = torch.randn(*shape, device="cuda"), torch.randn(shape[1], 3, device="cuda")
            torch.testing.assert_close(graphed(x, y), x @ y + 1, rtol=0, atol=0)
    assert len(graphed._graphs) == 2


@requires_gpu
def test_calls_queued_on_different_streams_do_not_overwrite_each_others_buffers():
    """A call on a second stream, queued while the first call's replay still runs on the first,
    waits for it before copying its input into the shared static buffer."""
    def slow(x):  # about a millisecond of GPU work: the second call is queued long before it ends
        for _ in range(20):
            x = torch.tanh(x @ x.T / x.shape[1]) + 1
        return x
    graphed = CUDAGraphed(slow)
    inputs = [torch.randn(1024, 1024, device="cuda") + k for k in range(2)]
    expected = [slow(x) for x in inputs]
    graphed(inputs[0])  # captured
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in inputs]
    outputs = []
    for stream, x in zip(streams, inputs):
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outputs.append(graphed(x))
    torch.cuda.synchronize()
    for output, exact in zip(outputs, expected):
        torch.testing.assert_close(output, exact)


@requires_gpu
def test_another_thread_allocates_and_synchronises_during_a_capture():
    """The capture is held open until another thread has allocated GPU memory (a cudaMalloc: the
    capture emptied the allocator's cache) and waited for a result; in CUDA's global capture mode
    both are errors."""
    capturing, worker_done, calls, errors = threading.Event(), threading.Event(), [], []

    def fn(x):
        calls.append(x.shape)
        if len(calls) == 3:  # two warm-up runs, then the capture
            capturing.set()
            assert worker_done.wait(60), "the other thread did not finish"
        return x * 2 + 1

    def other_thread():
        try:
            assert capturing.wait(60), "no capture started"
            total = torch.ones(1 << 22, device="cuda").sum()
            assert total.item() == 1 << 22
        except Exception as error:  # noqa: BLE001 - handed to the test thread
            errors.append(error)
        finally:
            worker_done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    x = torch.randn(1000, device="cuda")
    out = CUDAGraphed(fn)(x)
    worker.join()
    assert errors == [] and len(calls) == 3
    torch.testing.assert_close(out, x * 2 + 1, rtol=0, atol=0)
