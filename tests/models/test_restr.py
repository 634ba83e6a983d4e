import pytest
import torch

import restr_fast
from restr_fast import build_model


@pytest.mark.parametrize("preset, height, width", [
    ("restr-b16", 64, 64), ("restr-b16", 48, 80),
    ("restr-b16-p8", 32, 32), ("restr-b16-p8", 40, 24),
    ("restr-tiny", 96, 96), ("restr-tiny", 64, 128),
])
def test_output_shapes_of_every_preset(preset, height, width, make_inputs):
    torch.manual_seed(0)
    model = build_model(preset, image_size=height).eval()
    images, tokens = make_inputs(model.config, batch_size=2, height=height, width=width)
    with torch.no_grad():
        out = model(images, tokens)
    P = model.config.patch_size
    assert out.pixel_logits.shape == (2, 1, height, width)
    assert out.patch_logits.shape == (2, 1, height // P, width // P)
    assert torch.isfinite(out.pixel_logits).all() and torch.isfinite(out.patch_logits).all()


VARIANTS = [
    dict(fusion=fusion, fusion_depth=depth, weight_sharing=shared)
    for fusion in ("cme", "vme", "ime") for depth in (2, 4, 6) for shared in (False, True)
] + [
    dict(decoder=False), dict(mask_form="logit"), dict(mask_projected=True), dict(patch_projection=False),
    dict(patch_label="any"),
    dict(patch_size=4, image_size=32), dict(patch_size=16, image_size=32), dict(attention="math"),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_variant_runs_and_every_parameter_gets_a_gradient(overrides, tiny_config, make_inputs):
    torch.manual_seed(0)
    model = build_model(tiny_config, **overrides)
    config = model.config
    images, tokens = make_inputs(config, batch_size=2)
    out = model(images, tokens)
    assert out.pixel_logits.shape == (2, 1, config.image_size, config.image_size)
    assert out.patch_logits.shape == (2, 1, config.grid_size, config.grid_size)
    masks = (torch.rand(2, 1, config.image_size, config.image_size) > 0.5).float()
    restr_fast.loss(out, masks, config).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"


def test_weight_sharing_halves_the_fusion_blocks(tiny_config):
    plain = build_model(tiny_config, fusion_depth=4)
    shared = build_model(tiny_config, fusion_depth=4, weight_sharing=True)
    assert len(plain.fusion.vl_encoder.blocks) == 2 and len(shared.fusion.vl_encoder.blocks) == 1
    vme = build_model(tiny_config, fusion="vme", fusion_depth=6, weight_sharing=True)
    assert len(vme.fusion.encoder.blocks) == 1 and vme.fusion.encoder.depth == 6


def test_seed_of_ime_never_sees_the_image(tiny_config, make_inputs):
    torch.manual_seed(0)
    images, tokens = make_inputs(tiny_config)
    other_images = torch.rand_like(images)
    for variant, sees_image in (("ime", False), ("cme", True), ("vme", True)):
        model = build_model(tiny_config, fusion=variant).eval()
        with torch.no_grad():
            def classifier(x):
                visual = model.vision(x)
                words = model.language(tokens, tokens != 0)
                z_v = model.visual_proj(torch.nn.functional.normalize(visual, dim=-1))
                z_l = model.text_proj(torch.nn.functional.normalize(words, dim=-1)) * (tokens != 0)[..., None]
                return model.fusion(z_v, z_l, tokens != 0)[1]
            changed = not torch.allclose(classifier(images), classifier(other_images))
        assert changed == sees_image, variant


def test_padded_words_do_not_change_the_fusion(tiny_config):
    torch.manual_seed(0)
    for variant in ("cme", "vme", "ime"):
        fusion = build_model(tiny_config, fusion=variant).fusion.eval()
        z_v = torch.randn(2, 16, tiny_config.dim)
        z_l = torch.randn(2, tiny_config.max_words, tiny_config.dim)
        word_mask = torch.ones(2, tiny_config.max_words, dtype=torch.bool)
        word_mask[0, :7] = False
        word_mask[1, :19] = False
        noisy = z_l.clone()
        noisy[~word_mask] = torch.randn(int((~word_mask).sum()), tiny_config.dim) * 100
        with torch.no_grad():
            a, b = fusion(z_v, z_l, word_mask), fusion(z_v, noisy, word_mask)
        torch.testing.assert_close(a[0], b[0], msg=variant)
        torch.testing.assert_close(a[1], b[1], msg=variant)


def test_sigmoid_and_logit_masking(tiny_config):
    torch.manual_seed(0)
    patches, classifier = torch.randn(2, 9, tiny_config.dim), torch.randn(2, tiny_config.dim)
    for form in ("sigmoid", "logit"):
        head = build_model(tiny_config, mask_form=form, patch_projection=False).seed_classifier
        logits, masked = head(patches, classifier)
        expected = (patches @ classifier[:, :, None]).squeeze(-1) / tiny_config.dim ** 0.5
        torch.testing.assert_close(logits, expected)
        weight = expected.sigmoid() if form == "sigmoid" else expected
        torch.testing.assert_close(masked, patches * weight[..., None])


def test_masking_of_the_projected_patches(tiny_config):
    """The released code's form: proj_patch(z'_v), scored and masked (with the raw score there)."""
    torch.manual_seed(0)
    patches, classifier = torch.randn(2, 9, tiny_config.dim), torch.randn(2, tiny_config.dim)
    head = build_model(tiny_config, mask_form="logit", mask_projected=True).seed_classifier
    logits, masked = head(patches, classifier)
    projected, seed = head.proj_patch(patches), head.proj_cls(classifier)
    expected = (projected @ seed[:, :, None]).squeeze(-1) / tiny_config.dim ** 0.5
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(masked, projected * expected[..., None])
    with pytest.raises(ValueError, match="mask_projected .* needs patch_projection=True"):
        build_model(tiny_config, mask_projected=True, patch_projection=False)


def test_deterministic_under_a_seed(tiny_config, make_inputs):
    images, tokens = make_inputs(tiny_config)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(tiny_config)
        outputs.append((model.state_dict(), model(images, tokens).pixel_logits))
    for name, tensor in outputs[0][0].items():
        assert torch.equal(tensor, outputs[1][0][name]), name
    assert torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize("overrides", [{}, {"fast": True}, {"fusion": "vme", "weight_sharing": True}])
def test_activation_checkpointing_keeps_the_outputs_and_every_gradient(overrides, tiny_config, make_inputs):
    """Each checkpointed block runs again in the backward pass: the same outputs and gradients as without."""
    torch.manual_seed(0)
    model = build_model(tiny_config, **overrides)
    images, tokens = make_inputs(tiny_config)
    images.requires_grad_()
    results = []
    for checkpointing in (False, True):
        model.zero_grad()
        images.grad = None
        model.set_grad_checkpointing(checkpointing)
        out = model(images, tokens)
        (out.pixel_logits.square().mean() + out.patch_logits.mean()).backward()
        results.append((out, images.grad, {name: p.grad for name, p in model.named_parameters()}))
    (plain, plain_input, plain_grads), (checkpointed, checkpointed_input, checkpointed_grads) = results
    assert torch.equal(checkpointed.pixel_logits, plain.pixel_logits)
    assert torch.equal(checkpointed.patch_logits, plain.patch_logits)
    torch.testing.assert_close(checkpointed_input, plain_input, rtol=1e-6, atol=1e-9)
    for name, grad in plain_grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-6, atol=1e-9, msg=name)


def test_the_state_dict_is_the_whole_model(tiny_config, make_inputs):
    """A model built on the meta device and loaded, or cast to bf16 and back and loaded, gives the
    original's outputs: nothing it computes with (the word positions) lives outside its state dict."""
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    images, tokens = make_inputs(tiny_config)
    expected = model(images, tokens).pixel_logits
    with torch.device("meta"):
        empty = build_model(tiny_config)
    empty.to_empty(device="cpu").load_state_dict(model.state_dict())
    round_trip = build_model(tiny_config).bfloat16().float()
    round_trip.load_state_dict(model.state_dict())
    for loaded in (empty, round_trip):
        assert torch.equal(loaded.eval()(images, tokens).pixel_logits, expected)


def test_an_empty_batch_gives_empty_logits(tiny_config, make_inputs):
    images, tokens = make_inputs(tiny_config)
    out = build_model(tiny_config)(images[:0], tokens[:0])
    assert out.pixel_logits.shape == (0, 1, *images.shape[2:]) and out.patch_logits.shape[0] == 0


def test_segment_refuses_a_size_its_grid_does_not_fit(tiny_config, make_inputs):
    model = build_model(tiny_config)
    images, tokens = make_inputs(tiny_config)
    z_v = model.encode_images(images)
    size = images.shape[2] + 6, images.shape[3]  # the same number of patches, not a multiple of the patch
    with pytest.raises(ValueError, match=f"size {size[0]}x{size[1]} is not a multiple of the patch size"):
        model.segment(z_v, tokens, size)


def test_other_input_sizes_resample_the_position_embedding(tiny_config, make_inputs):
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    images, tokens = make_inputs(tiny_config, height=48, width=24)
    with torch.no_grad():
        out = model(images, tokens)
    assert out.pixel_logits.shape == (2, 1, 48, 24)
    assert out.patch_logits.shape == (2, 1, 6, 3)


def test_word_vectors_load_into_the_embedding(tiny_config):
    vectors = torch.randn(tiny_config.vocab_size, tiny_config.word_dim)
    model = build_model(tiny_config, word_vectors=vectors)
    assert torch.equal(model.language.embed.weight[1:], vectors[1:])
    assert not model.language.embed.weight[0].any()
    with pytest.raises(ValueError, match="word vectors have shape"):
        build_model(tiny_config, word_vectors=torch.randn(7, tiny_config.word_dim))


@pytest.mark.parametrize("images, tokens, error, message", [
    ((2, 3, 30, 32), (2, 20), ValueError, "not a positive multiple of the patch size 8"),
    ((2, 1, 32, 32), (2, 20), ValueError, r"shape \(B, 3, H, W\)"),
    ((3, 32, 32), (2, 20), ValueError, r"shape \(B, 3, H, W\)"),
    ((2, 3, 32, 32), (2, 19), ValueError, r"tokens must have shape \(B, max_words\) = \(2, 20\)"),
    ((2, 3, 32, 32), (3, 20), ValueError, r"tokens must have shape"),
    ((2, 3, 32, 32), (40,), ValueError, r"tokens must have shape"),
])
def test_bad_shapes_are_named(images, tokens, error, message, tiny_config):
    model = build_model(tiny_config)
    with pytest.raises(error, match=message):
        model(torch.zeros(images), torch.ones(tokens, dtype=torch.long))


def test_bad_dtypes_and_values_are_named(tiny_config):
    model = build_model(tiny_config)
    images, tokens = torch.zeros(2, 3, 32, 32), torch.ones(2, 20, dtype=torch.long)
    with pytest.raises(TypeError, match="tokens must be int64"):
        model(images, tokens.float())
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        model(images.to(torch.uint8), tokens)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size=50\)"):
        model(images, tokens * 50)
    empty = tokens.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"token rows \[1\] hold only padding"):
        model(images, empty)
    with pytest.raises(TypeError, match="must be tensors"):
        model(images.numpy(), tokens)
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(TypeError, match=f"images are {dtype} but the model's weights torch.float32: cast"):
            model(images.to(dtype), tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the images itself
        assert model(images.bfloat16(), tokens).pixel_logits.shape == (2, 1, 32, 32)
