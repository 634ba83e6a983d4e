"""Loading local timm ViT checkpoints into the vision encoder."""
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer

from restr_fast import build_model, get_config
from restr_fast.models.vision import VisionEncoder

DIM, DEPTH, HEADS = 48, 2, 4


def timm_vit(img_size=32, patch_size=16):
    torch.manual_seed(1)
    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=DIM, depth=DEPTH,
                            num_heads=HEADS, num_classes=10).eval()
    with torch.no_grad():  # make biases and norms non-trivial so that a missed copy shows
        for name, parameter in vit.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return vit


def encoder(image_size=32, patch_size=16):
    return build_model("restr-tiny", image_size=image_size, patch_size=patch_size, vision_dim=DIM,
                       vision_depth=DEPTH, vision_heads=HEADS).vision.eval()


def save_npz(vit, path, prefix=""):
    """Write ``vit`` in Google's ViT .npz layout (the inverse of timm's loader), its names under ``prefix``."""
    def arr(t):
        return t.detach().numpy()
    d = vit.embed_dim
    w = {
        "embedding/kernel": arr(vit.patch_embed.proj.weight.permute(2, 3, 1, 0)),
        "embedding/bias": arr(vit.patch_embed.proj.bias),
        "cls": arr(vit.cls_token),
        "Transformer/posembed_input/pos_embedding": arr(vit.pos_embed),
        "Transformer/encoder_norm/scale": arr(vit.norm.weight),
        "Transformer/encoder_norm/bias": arr(vit.norm.bias),
        "head/kernel": arr(vit.head.weight.T),
        "head/bias": arr(vit.head.bias),
    }
    for i, block in enumerate(vit.blocks):
        p = f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        heads = block.attn.num_heads
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        for name, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            w[a + f"{name}/kernel"] = arr(weight.T.reshape(d, heads, d // heads))
            w[a + f"{name}/bias"] = arr(bias.reshape(heads, d // heads))
        w[a + "out/kernel"] = arr(block.attn.proj.weight.reshape(d, heads, d // heads).permute(1, 2, 0))
        w[a + "out/bias"] = arr(block.attn.proj.bias)
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = arr(block.norm1.weight), arr(block.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = arr(block.norm2.weight), arr(block.norm2.bias)
        w[p + "MlpBlock_3/Dense_0/kernel"], w[p + "MlpBlock_3/Dense_0/bias"] = arr(block.mlp.fc1.weight.T), arr(block.mlp.fc1.bias)
        w[p + "MlpBlock_3/Dense_1/kernel"], w[p + "MlpBlock_3/Dense_1/bias"] = arr(block.mlp.fc2.weight.T), arr(block.mlp.fc2.bias)
    np.savez(path, **{prefix + name: value for name, value in w.items()})


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz", "opt/target/.npz"])
def test_checkpoint_gives_timms_features(suffix, tmp_path):
    vit = timm_vit()
    path = tmp_path / "vit.npz" if suffix.endswith(".npz") else tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save({"model": vit.state_dict()}, path)
    elif suffix == ".safetensors":
        save_file(vit.state_dict(), path)
    else:
        save_npz(vit, path, prefix=suffix.removesuffix(".npz"))
    ours = encoder()
    ours.load_pretrained(path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vit.forward_features(images)[:, 1:]  # patch tokens
        torch.testing.assert_close(ours(images), expected, rtol=1e-5, atol=1e-5)


def test_position_and_patch_embeddings_are_resampled(tmp_path):
    vit = timm_vit(img_size=32, patch_size=16)  # 2x2 grid
    path = tmp_path / "vit.safetensors"
    save_file(vit.state_dict(), path)

    bigger = encoder(image_size=64)  # 4x4 grid
    bigger.load_pretrained(path)
    expected = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(bigger.vit.pos_embed.detach(), expected)

    patch8 = encoder(image_size=32, patch_size=8)  # patch-16 weights -> patch 8, 4x4 grid
    patch8.load_pretrained(path)
    expected = resample_patch_embed(vit.patch_embed.proj.weight.detach(), [8, 8])
    torch.testing.assert_close(patch8.vit.patch_embed.proj.weight.detach(), expected)
    assert patch8.vit.pos_embed.shape == (1, 17, DIM)
    with torch.no_grad():
        assert patch8(torch.randn(1, 3, 32, 32)).shape == (1, 16, DIM)


def test_build_model_takes_the_weights_path(tmp_path):
    vit = timm_vit()
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    model = build_model("restr-tiny", image_size=32, patch_size=16, vision_dim=DIM, vision_depth=DEPTH,
                        vision_heads=HEADS, vision_weights=path)
    torch.testing.assert_close(model.vision.vit.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(model.vision.vit.pos_embed, vit.pos_embed)  # replaces the initial pattern


def test_position_embedding_starts_as_a_2d_sine_cosine_pattern():
    """From scratch, each patch's position is visible from the first step: the learnable position
    embedding starts as sin/cos of the patch's row and column, not as small noise."""
    config = get_config("restr-tiny", image_size=40, patch_size=8, vision_dim=18, vision_heads=2)  # 5x5, D % 4 = 2
    pos_embed = VisionEncoder(config).vit.pos_embed  # (1, 1 + h*w, D)
    assert pos_embed.requires_grad and pos_embed.shape == (1, 26, 18)
    frequencies = 10_000.0 ** (-np.arange(4) / 4)
    for index, (row, column) in enumerate((r, c) for r in range(5) for c in range(5)):
        expected = np.concatenate([np.sin(row * frequencies), np.sin(column * frequencies),
                                   np.cos(row * frequencies), np.cos(column * frequencies), [0.0, 0.0]])
        np.testing.assert_allclose(pos_embed[0, 1 + index].detach().numpy(), expected, atol=1e-6)


def test_missing_corrupt_and_mismatched_files_are_named(tmp_path):
    ours = encoder()
    with pytest.raises(FileNotFoundError, match="ViT weights file not found: .*nowhere.pth"):
        ours.load_pretrained(tmp_path / "nowhere.pth")
    for name in ("junk.pth", "junk.safetensors", "junk.npz"):
        (tmp_path / name).write_bytes(b"not a checkpoint" * 10)
        with pytest.raises(ValueError, match=f"{name}"):
            ours.load_pretrained(tmp_path / name)
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported ViT weights file"):
        ours.load_pretrained(tmp_path / "weights.h5")

    wider = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=DEPTH, num_heads=HEADS)
    torch.save(wider.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(ValueError, match="has shape .* expects"):
        ours.load_pretrained(tmp_path / "wider.pth")
    deeper = VisionTransformer(img_size=32, patch_size=16, embed_dim=DIM, depth=DEPTH + 1, num_heads=HEADS)
    torch.save(deeper.state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match="weight\\(s\\) that the vision encoder does not have"):
        ours.load_pretrained(tmp_path / "deeper.pth")
    shallower = VisionTransformer(img_size=32, patch_size=16, embed_dim=DIM, depth=DEPTH - 1, num_heads=HEADS)
    torch.save(shallower.state_dict(), tmp_path / "shallower.pth")
    with pytest.raises(ValueError, match="is missing"):
        ours.load_pretrained(tmp_path / "shallower.pth")
    save_npz(deeper, tmp_path / "deeper.npz")  # timm's .npz loader alone would leave the extra block out
    with pytest.raises(ValueError, match=f"holds a ViT of {DEPTH + 1} blocks but the vision encoder has {DEPTH}"):
        ours.load_pretrained(tmp_path / "deeper.npz")
    save_npz(shallower, tmp_path / "shallower.npz")
    with pytest.raises(ValueError, match=f"holds a ViT of {DEPTH - 1} blocks"):
        ours.load_pretrained(tmp_path / "shallower.npz")
    save_npz(deeper, tmp_path / "prefixed.npz", "opt/target/")  # a prefix that timm's loader strips
    with pytest.raises(ValueError, match=f"holds a ViT of {DEPTH + 1} blocks but the vision encoder has {DEPTH}"):
        ours.load_pretrained(tmp_path / "prefixed.npz")
    np.savez(tmp_path / "stacked.npz", **{  # big_vision's layout: each weight of every block in one array
        "params/embedding/kernel": np.zeros((16, 16, 3, DIM), np.float32),
        "params/Transformer/encoderblock/LayerNorm_0/scale": np.ones((DEPTH + 1, DIM), np.float32)})
    with pytest.raises(ValueError, match=f"holds a ViT of {DEPTH + 1} blocks but the vision encoder has {DEPTH}"):
        ours.load_pretrained(tmp_path / "stacked.npz")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        ours.load_pretrained(tmp_path / "list.pth")


def test_a_vit_b16_checkpoint_gives_timms_features(tmp_path):
    """The full ViT-B/16 architecture (timm's ``vit_base_patch16_224``, 12 x 768, randomly
    initialised) at a 2x2 grid; built on the meta device and filled once, so that 86M parameters
    cost no init passes."""
    torch.manual_seed(0)
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, num_classes=0)
        ours = VisionEncoder(get_config("restr-b16", image_size=32))
    vit, ours = vit.to_empty(device="cpu").eval(), ours.to_empty(device="cpu").eval()
    with torch.no_grad():
        for name, parameter in vit.named_parameters():
            is_norm = "norm" in name  # LayerNorms near 1 (weights) and 0 (biases), as trained ones are
            parameter.normal_(1.0 if is_norm and name.endswith("weight") else 0.0, 0.1 if is_norm else 0.02)
    path = tmp_path / "vit_b16.safetensors"
    save_file(vit.state_dict(), path)
    ours.load_pretrained(path)  # fills every parameter, or raises naming the missing one
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vit.forward_features(images)[:, 1:]  # (2, 4, 768) patch tokens
        torch.testing.assert_close(ours(images), expected, rtol=1e-5, atol=1e-5)
