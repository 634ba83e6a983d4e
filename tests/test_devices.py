"""Device names as users write them."""
import pytest
import torch

from restr_fast.devices import parse_device, resolve_device


def test_names_parse_and_auto_resolves_to_what_the_machine_has():
    assert parse_device("auto") is None
    assert parse_device("cpu") == torch.device("cpu") and parse_device("cuda:1") == torch.device("cuda", 1)
    assert parse_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for wrong in ("foo", "gpu", ""):
        with pytest.raises(ValueError, match=f"unknown device '{wrong}': use auto, cpu, cuda or cuda:N"):
            parse_device(wrong)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_a_clear_error():
    for name in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ValueError, match="this machine has no usable CUDA GPU: use auto or cpu"):
            resolve_device(name)


@pytest.mark.parametrize("name", ["mps", "meta", "xpu", torch.device("meta")])
def test_devices_torch_knows_but_restr_fast_does_not_run_on_are_named(name):
    with pytest.raises(ValueError, match="is not supported: use auto, cpu, cuda or cuda:N"):
        parse_device(name)


@pytest.mark.gpu(reason="needs a CUDA GPU: checks a GPU index beyond the machine's")
def test_a_gpu_index_beyond_the_machine_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
