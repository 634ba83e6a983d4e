"""The paper's recipe: AdamW's parameter groups and the warm-up + polynomial schedule."""
import pytest
import torch

from restr_fast import build_model, get_config
from restr_fast.training.optim import build_optimizer, warmup_poly_schedule


def test_groups_give_the_vision_encoder_a_tenth_and_leave_norms_biases_and_tokens_undecayed():
    model = build_model(get_config("restr-tiny", vocab_size=50))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=5e-4)
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert len(group_of) == len(names)  # every trainable parameter, once
    for name, parameter in names.items():
        group = group_of[id(parameter)]
        assert group["lr"] == pytest.approx(1e-4 if name.startswith("vision.") else 1e-3), name
        undecayed = parameter.dim() == 1 or name in ("vision.vit.pos_embed", "vision.vit.cls_token", "fusion.seed")
        assert group["weight_decay"] == (0.0 if undecayed else 5e-4), name
    for name in ("vision.vit.pos_embed", "vision.vit.cls_token", "fusion.seed"):
        assert names[name].dim() > 1, name  # left out by name, not by their rank
    decayed = {name for name, p in names.items() if group_of[id(p)]["weight_decay"] > 0}
    assert {"language.embed.weight", "vision.vit.patch_embed.proj.weight"} <= decayed


def test_a_compiled_or_wrapped_model_gets_the_same_groups():
    """torch.compile's parameter names start with _orig_mod., DistributedDataParallel's with module.:
    the vision encoder is found by its parameters, not by their names."""
    model = build_model(get_config("restr-tiny", vocab_size=50))

    class Wrapper(torch.nn.Module):  # holds the model as DistributedDataParallel does
        def __init__(self, module):
            super().__init__()
            self.module = module

    def groups(optimizer):
        return sorted((group["lr"], group["weight_decay"], len(group["params"])) for group in optimizer.param_groups)

    expected = groups(build_optimizer(model, lr=1e-3))
    for wrapped in (torch.compile(model), Wrapper(model), Wrapper(torch.compile(model))):
        assert groups(build_optimizer(wrapped, lr=1e-3)) == expected
    with pytest.raises(TypeError, match="build_optimizer takes a ReSTR model"):
        build_optimizer(torch.nn.Linear(2, 2), lr=1e-3)


def test_frozen_parameters_are_left_out():
    model = build_model(get_config("restr-tiny", vocab_size=50))
    model.vision.requires_grad_(False)
    optimizer = build_optimizer(model, lr=1e-3)
    assert all(group["lr"] == pytest.approx(1e-3) for group in optimizer.param_groups)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == sum(
        p.requires_grad for p in model.parameters())


def test_schedule_warms_up_linearly_then_decays_polynomially_to_zero():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = warmup_poly_schedule(optimizer, total_steps=20, warmup_fraction=0.1, power=0.9)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:2] == pytest.approx([1.0, 2.0])  # 2 warm-up steps: lr * (step + 1) / 2
    assert rates[2:] == pytest.approx([2.0 * (1 - k / 18) ** 0.9 for k in range(18)])
    assert optimizer.param_groups[0]["lr"] == 0.0  # after the last step
