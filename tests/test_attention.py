import pytest
import torch

from restr_fast import attention_backend, build_model
from restr_fast.attention import attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_and_math_agree_with_a_key_mask(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 8, dtype=dtype) for _ in range(3))
    key_mask = torch.ones(2, 11, dtype=torch.bool)
    key_mask[0, :4] = False
    torch.testing.assert_close(attention(q, k, v, key_mask, "sdpa"), attention(q, k, v, key_mask, "math"))
    torch.testing.assert_close(attention(q, k, v, None, "sdpa"), attention(q, k, v, None, "math"))
    # a masked key changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[0, :, :4], v2[0, :, :4] = 1e3, -1e3
    torch.testing.assert_close(attention(q, k2, v2, key_mask, "math"), attention(q, k, v, key_mask, "math"))


def test_whole_model_agrees_across_backends(tiny_config, make_inputs):
    torch.manual_seed(0)
    model = build_model(tiny_config).double().eval()
    images, tokens = make_inputs(tiny_config)
    with torch.no_grad(), attention_backend("math"):
        reference = model(images.double(), tokens)
    with torch.no_grad(), attention_backend("sdpa"):
        fused = model(images.double(), tokens)
    torch.testing.assert_close(fused.pixel_logits, reference.pixel_logits)
    torch.testing.assert_close(fused.patch_logits, reference.patch_logits)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        with attention_backend("flash"):
            pass
