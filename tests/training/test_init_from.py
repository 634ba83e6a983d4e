"""Starting a run from a trained model: weights carried over, position table resampled, words mapped."""
import json

import pytest
import torch
import yaml
from timm.models.vision_transformer import VisionTransformer

from restr_fast import build_model, get_config
from restr_fast.cli import main
from restr_fast.data.synthetic import generate
from restr_fast.deployable import save_model_folder
from restr_fast.text import Vocabulary
from restr_fast.training import TrainConfig, load_checkpoint
from restr_fast.training.init_from import POSITIONS, WORDS, init_from_trained

MODEL = dict(image_size=32, vision_dim=32, vision_depth=1, vision_heads=2, word_dim=16, text_depth=1, text_heads=2,
             text_mlp_dim=32, dim=32, fusion_heads=2, fusion_depth=2, attention="math")


def trained_model(tmp_path, words, **overrides):
    """A model folder of a randomly initialised restr-tiny (seed 1) over ``words``, and the model."""
    vocabulary = Vocabulary(words)
    torch.manual_seed(1)
    model = build_model("restr-tiny", **{**MODEL, "vocab_size": len(vocabulary), **overrides})
    return save_model_folder(tmp_path / "trained", model, vocabulary), model, vocabulary


def test_weights_words_and_positions_carry_over(tmp_path, make_inputs):
    folder, trained, trained_vocabulary = trained_model(tmp_path, ["red", "circle", "left", "square"])
    vocabulary = Vocabulary(["square", "blue", "red", "top"])  # two words known, in other places, two new
    torch.manual_seed(2)
    model = build_model("restr-tiny", **{**MODEL, "image_size": 48, "vocab_size": len(vocabulary), "fast": True})
    fresh = model.state_dict()[WORDS].clone()
    assert init_from_trained(model, vocabulary, folder) == (folder, 4 + 2)
    for name, tensor in trained.state_dict().items():
        if name not in (POSITIONS, WORDS):
            assert torch.equal(model.state_dict()[name], tensor), name
    rows, trained_rows = model.state_dict()[WORDS], trained.state_dict()[WORDS]
    for word in vocabulary.words:
        expected = trained_rows[trained_vocabulary.index(word)] if word in trained_vocabulary else \
            fresh[vocabulary.index(word)]
        assert torch.equal(rows[vocabulary.index(word)], expected), word
    # at 48 pixels the model starts as the trained one computes at 48 pixels (its table resampled on the fly)
    images, _ = make_inputs(model.config, seed=3)
    tokens = torch.tensor([[0] * 17 + [vocabulary.index(w) for w in ("red", "square", "square")]] * 2)
    same = torch.tensor([[0] * 17 + [trained_vocabulary.index(w) for w in ("red", "square", "square")]] * 2)
    with torch.no_grad():
        out, expected = model.eval()(images, tokens), trained.eval()(images, same)
    torch.testing.assert_close(out.pixel_logits, expected.pixel_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.patch_logits, expected.patch_logits, rtol=1e-5, atol=1e-5)


def test_a_model_of_another_architecture_is_refused(tmp_path):
    folder, _, vocabulary = trained_model(tmp_path, ["red", "circle"], fusion="vme")
    model = build_model("restr-tiny", **{**MODEL, "vocab_size": len(vocabulary)})
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"another architecture: fusion 'vme' \(run: 'cme'\); only image_size, "
                                         r"patch_label, .* and the vocabulary may differ \(restr-fast train without"):
        init_from_trained(model, vocabulary, folder)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    other = Vocabulary(["blue", "square"])
    with pytest.warns(UserWarning, match="no word of the run's vocabulary is in .*trained's: every word"):
        assert init_from_trained(build_model("restr-tiny", **{**MODEL, "vocab_size": 6, "fusion": "vme"}),
                                 other, folder)[1] == 4
    with pytest.raises(ValueError, match="the vocabulary has 8 words but the model's embedding table 6 rows"):
        init_from_trained(model, Vocabulary(["blue", "square", "top", "left"]), folder)
    with pytest.raises(FileNotFoundError, match="init_from: checkpoint not found"):
        init_from_trained(model, vocabulary, tmp_path / "nothing")
    with pytest.raises(ValueError, match="both give the vision encoder's weights"):
        TrainConfig(data_root="data", init_from=str(folder), vit_weights="vit.npz")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, images=16, seed=2)
    return root


def test_cli_fine_tunes_a_trained_run_at_another_size(data_root, tmp_path, capsys):
    common = ["--data-root", str(data_root), "--dataset", "synthetic", "--batch-size", "2", "--device", "cpu",
              "--workers", "0"]
    tiny = get_config("restr-tiny")
    torch.save(VisionTransformer(img_size=32, patch_size=8, embed_dim=tiny.vision_dim, depth=tiny.vision_depth,
                                 num_heads=tiny.vision_heads, num_classes=0).state_dict(), tmp_path / "vit.pth")
    (tmp_path / "first.yaml").write_text(yaml.safe_dump({
        "model": "restr-tiny", "model_overrides": {"attention": "math"},
        "train": {"vit_weights": str(tmp_path / "vit.pth")}}))
    first = tmp_path / "first"
    assert main(["train", "--config", str(tmp_path / "first.yaml"), "--out", str(first), "--steps", "2",
                 "--img-size", "32", *common]) == 0
    trained = load_checkpoint(first / "checkpoints" / "best.pt")
    # no --config: the trained model's architecture (on the machine's fastest attention); an lr so small that
    # the weights stay the trained ones
    second = tmp_path / "second"
    args = ["train", "--init-from", str(first), "--out", str(second), "--steps", "1", "--img-size", "48",
            "--lr", "1e-30", *common]
    assert main(args) == 0
    tuned = load_checkpoint(second / "checkpoints" / "latest.pt")
    assert tuned["config"] == {**trained["config"], "image_size": 48, "attention": "auto"}
    assert tuned["vocabulary"] == trained["vocabulary"]  # built from the same sentences
    for name, tensor in trained["model"].items():
        if name != POSITIONS:
            torch.testing.assert_close(tuned["model"][name], tensor, rtol=1e-6, atol=1e-20, msg=name)
    assert tuned["model"][POSITIONS].shape == (1, 1 + 6 * 6, trained["config"]["vision_dim"])
    records = [json.loads(line) for line in (second / "log.jsonl").read_text().splitlines()]
    assert records[0]["init_from"] == str(first) and records[0]["init_weights"] == str((first / "model").resolve())
    assert records[0]["words_from_init"] == len(trained["vocabulary"]) - 4
    assert yaml.safe_load((second / "config.yaml").read_text())["train"]["init_from"] == str(first)
    capsys.readouterr()
    # the same command resumes; another starting model does not
    assert main(args + ["--resume", "--steps", "2", "--init-from", str(first.resolve())]) == 0  # the same folder
    assert main(args + ["--resume", "--init-from", str(first / "model")]) == 2
    assert "--init-from differs from" in capsys.readouterr().err
    assert main(["train", "--init-from", str(tmp_path / "nothing"), "--out", str(tmp_path / "none"), *common]) == 2
    assert "--init-from: checkpoint not found" in capsys.readouterr().err
    # a run folder's config.yaml starts a run like it: from the trained model, not from its vit_weights
    again = ["train", "--config", str(first / "config.yaml"), "--init-from", str(first), "--steps", "1", *common]
    assert main(again + ["--out", str(tmp_path / "again")]) == 0
    assert ("restr-fast train: warning: --init-from: the vision encoder starts from the trained model, not from "
            "the config's vit_weights") in capsys.readouterr().err
    assert main(again + ["--out", str(tmp_path / "unset"), "--vit-weights", ""]) == 0  # "" unsets it: no warning
    assert "warning" not in capsys.readouterr().err
    for run, flags in (("again", []), ("unset", ["--vit-weights", ""])):  # and the same commands resume
        assert main(again + ["--out", str(tmp_path / run), *flags, "--resume"]) == 0
        assert "is complete (1 steps): nothing to resume" in capsys.readouterr().out
    # a model of another architecture is named before anything is read or written
    third = tmp_path / "third"
    assert main(["train", "--config", "restr-b16", "--init-from", str(first), "--out", str(third),
                 "--data-root", str(tmp_path / "no-data")]) == 2
    assert "is a model of another architecture: patch_size 8 (run: 16), vision_dim 96" in capsys.readouterr().err
    assert not third.exists()
