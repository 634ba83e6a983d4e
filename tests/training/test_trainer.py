"""Training runs on a small synthetic dataset: outputs, resume, DDP, divergence and bad input."""
import dataclasses
import functools
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from timm.models.vision_transformer import VisionTransformer

from restr_fast import Predictor, build_model, get_config
from restr_fast.cli import main
from restr_fast.data.synthetic import generate
from restr_fast.training import (StepBatchSampler, TrainConfig, TrainingDiverged, evaluate, load_checkpoint,
                                 model_from_checkpoint, train)
from restr_fast.data import ReferDataset, sentences_of
from restr_fast.text import Vocabulary
from restr_fast.deployable import save_model_folder
from restr_fast.training.checkpoint import rng_state, save_checkpoint, set_rng_state

MODEL = dict(image_size=32, vision_dim=32, vision_depth=1, vision_heads=2, word_dim=16, text_depth=1, text_heads=2,
             text_mlp_dim=32, dim=32, fusion_heads=2, fusion_depth=2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, images=24, seed=1)
    return root


def config(data_root, **overrides):
    values = dict(data_root=str(data_root), dataset="synthetic", steps=6, batch_size=4, lr=1e-3, workers=0,
                  log_every=2, eval_every=3, eval_samples=8, checkpoint_every=3, progress=False, device="cpu")
    return TrainConfig(**{**values, **overrides})


def parameters(path):
    return load_checkpoint(path)["model"]


def test_sampler_is_deterministic_resumable_and_sharded():
    whole = list(StepBatchSampler(10, 4, 1, steps=5, seed=3))
    assert len(whole) == 5 and all(len(b) == 4 for b in whole)
    assert list(StepBatchSampler(10, 4, 1, steps=5, seed=3, start_step=2)) == whole[2:]
    shards = [list(StepBatchSampler(10, 2, 1, steps=5, seed=3, rank=r, world=2)) for r in range(2)]
    assert [a + b for a, b in zip(*shards)] == whole  # two processes see the single process's batches
    epoch = [i for b in list(StepBatchSampler(8, 4, 1, steps=2, seed=0)) for i in b]
    assert sorted(epoch) == list(range(8))  # one epoch: every sample once
    # resumed with another batch size: the stream goes on after the samples already trained on
    first = list(StepBatchSampler(10, 4, 1, steps=2, seed=3))
    rest = list(StepBatchSampler(10, 3, 1, steps=5, seed=3, start_step=2, start_position=8))
    stream = [i for b in list(StepBatchSampler(10, 1, 1, steps=17, seed=3)) for i in b]
    assert [i for b in first + rest for i in b] == stream


def test_run_writes_its_folder_and_checkpoints(data_root, tmp_path):
    torch.manual_seed(0)
    metrics = train(get_config("restr-tiny", **MODEL), config(data_root), tmp_path / "run")
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "vocab.txt", "log.jsonl", "checkpoints"}
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"latest.pt", "best.pt"}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [2, 3, 4, 6] and all(r["images_per_s"] > 0 for r in records if "loss" in r)
    # evaluations on the same 8 samples choose the best checkpoint; the final model is also evaluated whole
    assert [(r["step"], r["samples"]) for r in records if "eval" in r] == [(3, 8), (6, 8), (6, metrics["samples"])]
    assert 0.0 <= metrics["overall_iou"] <= 1.0 and metrics["samples"] > 8  # the last evaluation: the whole split
    assert load_checkpoint(run / "checkpoints" / "best.pt")["metrics"]["samples"] == 8
    # the base learning rate each logged step trained with (the vision encoder's is a tenth of it): warm-up to
    # 1e-3 in the first step of six, then (1 - progress) ** 0.9, steps 2, 3, 4 and 6 at progress 0, 1/5, 2/5, 4/5
    assert [r["lr"] for r in records if "loss" in r] == pytest.approx([1e-3 * (1 - k / 5) ** 0.9 for k in (0, 1, 2, 4)])
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 6 and state["vocabulary"][:4] == ["<pad>", "<go>", "<eos>", "<unk>"]
    model, vocabulary = model_from_checkpoint(state)
    assert model.config.vocab_size == len(vocabulary) and model.config.dim == 32
    deployed = Predictor.from_checkpoint(run / "model", device="cpu", fast=False)  # the best model, deployable
    assert deployed.vocabulary == vocabulary and deployed.config == model.config
    for name, tensor in parameters(run / "checkpoints" / "best.pt").items():
        assert torch.equal(deployed.model.state_dict()[name], tensor), name
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        train(get_config("restr-tiny", **MODEL), config(data_root), run)


def test_the_papers_model_without_pretrained_weights_is_warned_of():
    from restr_fast.training.trainer import _untrained_parts
    paper, tiny = get_config("restr-b16"), get_config("restr-tiny")
    assert [w.split(" start")[0] for w in _untrained_parts(paper, TrainConfig())] == ["the ViT-B vision encoder",
                                                                                   "the word embeddings"]
    assert _untrained_parts(paper, TrainConfig(vit_weights="vit.npz", glove="glove.txt")) == []
    assert _untrained_parts(paper, TrainConfig(init_from="runs/a")) == []  # a trained model
    assert _untrained_parts(tiny, TrainConfig()) == []  # the demo's model, trained from scratch as it is meant to


def test_data_loading_workers_are_at_most_the_usable_cpus(monkeypatch):
    from restr_fast.training.trainer import _usable_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [_usable_workers(n) for n in (0, 2)] == [0, 2]
    with pytest.warns(UserWarning, match="workers=4 is more than the 2 CPUs this process may use: 2 load the data"):
        assert _usable_workers(4) == 2


def test_a_new_run_writes_over_nothing_in_its_folder(data_root, tmp_path):
    """A folder holding a file or folder a run writes (a project's own config.yaml, say) is refused, untouched."""
    for name in ("config.yaml", "vocab.txt", "model"):
        folder = tmp_path / name.replace(".", "-")
        folder.mkdir()
        (folder / name).write_text("the user's") if "." in name else (folder / name).mkdir()
        with pytest.raises(ValueError, match=rf"holds {name}, which a run writes: nothing is overwritten"):
            train(get_config("restr-tiny", **MODEL), config(data_root), folder)
        assert sorted(p.name for p in folder.iterdir()) == [name]
        if "." in name:
            assert (folder / name).read_text() == "the user's"


def test_accumulated_micro_batches_train_as_their_whole_batch(data_root, tmp_path):
    model_config = get_config("restr-tiny", **MODEL)
    runs = {}
    for name, batch_size, accumulate in (("whole", 4, 1), ("accumulated", 2, 2)):
        torch.manual_seed(0)
        train(model_config, config(data_root, batch_size=batch_size, accumulate=accumulate), tmp_path / name)
        runs[name] = load_checkpoint(tmp_path / name / "checkpoints" / "latest.pt")
        runs[name]["losses"] = [json.loads(line).get("loss") for line in (tmp_path / name / "log.jsonl").open()]
    whole, accumulated = runs["whole"], runs["accumulated"]
    assert accumulated["samples_seen"] == whole["samples_seen"] == 6 * 4
    assert [loss for loss in accumulated["losses"] if loss] == pytest.approx([l for l in whole["losses"] if l], rel=1e-5)
    torch.manual_seed(0)
    initial = build_model(model_config.replace(vocab_size=whole["model"]["language.embed.weight"].shape[0])).state_dict()
    for name, tensor in whole["model"].items():
        ours = accumulated["model"][name]
        if name.endswith("attn.qkv.bias"):
            # the keys' bias has no gradient in exact arithmetic (a softmax does not change under a shift): AdamW
            # steps on rounding noise, by up to lr * noise / eps, differently in the two runs; it barely moves
            third = len(tensor) // 3
            for run in (tensor, ours):
                torch.testing.assert_close(run[third:2 * third], initial[name][third:2 * third], rtol=0, atol=1e-4)
            tensor, ours = torch.cat([tensor[:third], tensor[2 * third:]]), torch.cat([ours[:third], ours[2 * third:]])
        torch.testing.assert_close(ours, tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert all(not torch.equal(whole["model"][name], initial[name]) for name in
               ("vision.vit.blocks.0.attn.qkv.weight", "decoder.head.weight"))  # the steps trained


def test_a_run_starts_from_its_glove_vectors_and_vit_weights(data_root, tmp_path):
    vocabulary = Vocabulary.from_sentences(sentences_of(data_root, "synthetic", "unc", "train"))
    glove = {word: np.random.default_rng(i).standard_normal(MODEL["word_dim"]).round(4)
             for i, word in enumerate(["red", "circle", "left", "Square"])}  # "Square": its lower-case form
    (tmp_path / "glove.txt").write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in glove.items()))
    torch.manual_seed(3)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=MODEL["vision_dim"], depth=MODEL["vision_depth"],
                            num_heads=MODEL["vision_heads"], num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    # one step at an lr too small to move a weight: the checkpoint holds what the run started from
    train(get_config("restr-tiny", **MODEL), config(data_root, steps=1, lr=1e-30, glove=str(tmp_path / "glove.txt"),
                                                    vit_weights=str(tmp_path / "vit.pth")), tmp_path / "run")
    weights = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["model"]
    for name, tensor in vit.state_dict().items():
        torch.testing.assert_close(weights[f"vision.vit.{name}"], tensor, rtol=1e-6, atol=1e-20, msg=name)
    for word, vector in glove.items():
        assert word.lower() in vocabulary
        row = weights["language.embed.weight"][vocabulary.index(word.lower())]
        torch.testing.assert_close(row, torch.tensor(vector, dtype=torch.float32), rtol=1e-6, atol=1e-20, msg=word)


@pytest.mark.parametrize("amp", ["off", "fp16"])  # fp16: the loss scale, lowered in the first part, goes on
def test_resumed_run_ends_with_the_parameters_of_an_uninterrupted_one(data_root, tmp_path, amp, monkeypatch):
    # a first scale at which the first steps' fp16 gradients overflow (each skips its update and
    # halves the scale) and the later ones do not
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 18))
    model_config = get_config("restr-tiny", **MODEL)
    torch.manual_seed(0)
    train(model_config, config(data_root, checkpoint_every=2, amp=amp), tmp_path / "whole")
    torch.manual_seed(0)
    assert train(model_config, config(data_root, checkpoint_every=2, stop_after=3, amp=amp), tmp_path / "parts") == {}
    first_part = load_checkpoint(tmp_path / "parts" / "checkpoints" / "latest.pt")
    assert first_part["step"] == 3
    if amp == "fp16":  # a fresh scaler would start over and skip other steps
        assert first_part["scaler"]["scale"] < 2.0 ** 18
    torch.manual_seed(123)  # the resumed run must not depend on the global seed
    train(model_config, config(data_root, checkpoint_every=2, amp=amp), tmp_path / "parts", resume=True)
    whole, parts = parameters(tmp_path / "whole" / "checkpoints" / "latest.pt"), parameters(tmp_path / "parts" / "checkpoints" / "latest.pt")
    assert any(not torch.equal(tensor, first_part["model"][name]) for name, tensor in whole.items())  # steps 4-6 updated
    for name, tensor in whole.items():
        assert torch.equal(tensor, parts[name]), name


def test_resume_after_a_crash_drops_the_log_records_of_the_lost_steps(data_root, tmp_path, monkeypatch):
    trainer = importlib.import_module("restr_fast.training.trainer")
    real, calls = trainer.loss_terms, [0]

    def crashing(*args):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt("a crash in step 5")
        return real(*args)

    monkeypatch.setattr(trainer, "loss_terms", crashing)
    run_config = config(data_root, log_every=1, eval_every=100, checkpoint_every=3)  # step 4 is lost in the crash
    with pytest.raises(KeyboardInterrupt):
        train(get_config("restr-tiny", **MODEL), run_config, tmp_path / "run")
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "lo')  # and a record the crash cut short
    monkeypatch.setattr(trainer, "loss_terms", real)
    train(get_config("restr-tiny", **MODEL), run_config, tmp_path / "run", resume=True)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]  # step 4 once, from the resumed run
    assert [(r["step"], next(key for key in r if key != "step")) for r in records if "loss" not in r and "eval" not in r] == [
        (0, "started"), (3, "checkpoint"), (3, "resumed"), (6, "checkpoint")]  # and the invocations and saves


def cli_train_args(data_root, run, steps, *flags):
    """``restr-fast train`` of restr-tiny on the synthetic set at 32 pixels, batch 2, on the CPU, with ``flags``."""
    return ["train", "--config", "restr-tiny", "--data-root", str(data_root), "--dataset", "synthetic", "--split-by",
            "unc", "--out", str(run), "--steps", str(steps), "--batch-size", "2", "--img-size", "32", "--device", "cpu",
            "--workers", "0", *flags]


def test_cli_trains_on_joined_splits_and_evaluates_on_another(data_root, tmp_path, capsys):
    """The released code's ReferIt protocol: train on train+val, evaluate on test (here testA)."""
    run = tmp_path / "run"
    assert main(cli_train_args(data_root, run, 2, "--train-split", "train+val", "--val-split", "testA",
                               "--eval-every", "2", "--log-every", "1")) == 0
    assert "testA overall IoU" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["eval"] for r in records if "eval" in r] == ["testA"]
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["train_split"], saved["val_split"]) == ("train+val", "testA")
    vocabulary = Vocabulary.load(run / "vocab.txt")
    sizes = {split: len(ReferDataset(data_root, "synthetic", "unc", split, vocabulary, 32))
             for split in ("train", "val", "testA")}
    assert {k: records[0][k] for k in ("train_samples", "val_samples")} == {
        "train_samples": sizes["train"] + sizes["val"], "val_samples": sizes["testA"]}


def test_a_run_records_absolute_paths_and_resumes_from_another_folder(data_root, tmp_path, monkeypatch, capsys):
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(data_root, tmp_path / "here" / "data")
    monkeypatch.chdir(tmp_path / "here")
    args = cli_train_args(Path("data"), Path("run"), 2, "--checkpoint-every", "1", "--eval-every", "2")
    assert main(args + ["--stop-after", "1"]) == 0
    saved = yaml.safe_load((tmp_path / "here" / "run" / "config.yaml").read_text())["train"]
    assert saved["data_root"] == str((tmp_path / "here" / "data").resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")  # a requeued job, started in another folder
    assert main(["train", "--out", str(tmp_path / "here" / "run"), "--resume"]) == 0
    assert load_checkpoint(tmp_path / "here" / "run" / "checkpoints" / "latest.pt")["step"] == 2
    assert "val overall IoU" in capsys.readouterr().out


def crash_in_step(monkeypatch, number):
    """Make the loss of training step ``number`` (one batch a step) raise KeyboardInterrupt."""
    trainer = importlib.import_module("restr_fast.training.trainer")
    real, calls = trainer.loss_terms, [0]

    def crashing(*args):
        calls[0] += 1
        if calls[0] == number:
            raise KeyboardInterrupt(f"a crash in step {number}")
        return real(*args)
    monkeypatch.setattr(trainer, "loss_terms", crashing)
    return lambda: monkeypatch.setattr(trainer, "loss_terms", real)


def change_loss(monkeypatch, change):
    """Make the trainer's loss terms of step n (one batch a step) ``change(n, output, terms)``."""
    trainer = importlib.import_module("restr_fast.training.trainer")
    real, calls = trainer.loss_terms, [0]

    def changed(output, masks, model_config):
        calls[0] += 1
        return change(calls[0], output, real(output, masks, model_config))
    monkeypatch.setattr(trainer, "loss_terms", changed)


def scored_evaluations(monkeypatch, scores):
    """Make the trainer's evaluations report ``scores`` as their overall IoU, one after another."""
    trainer = importlib.import_module("restr_fast.training.trainer")
    scores, real_evaluate = iter(scores), trainer.evaluate

    def scored(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "overall_iou": next(scores)}
    monkeypatch.setattr(trainer, "evaluate", scored)
    return scores


def test_resume_keeps_a_best_checkpoint_written_after_the_last_checkpoint(data_root, tmp_path, monkeypatch):
    """Evaluated at step 4, checkpointed at step 3, crashed in step 5: best.pt (step 4) outranks latest.pt's
    record of the best, a resumed run replaces it only with a better evaluation, and model/ is written
    from it again (a stop between the writes of best.pt and model/ leaves model/ one evaluation behind)."""
    scores = scored_evaluations(monkeypatch, [0.3, 0.6, 0.5, 0.4])  # steps 2, 4; resumed: 4 again, 6
    restore = crash_in_step(monkeypatch, 5)
    run_config = config(data_root, batch_size=2, eval_every=2, eval_samples=None, checkpoint_every=3)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(get_config("restr-tiny", **MODEL), run_config, run)
    best = run / "checkpoints" / "best.pt"
    latest = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert load_checkpoint(best)["step"] == 4 and latest["step"] == 3
    save_model_folder(run / "model", *model_from_checkpoint(latest))  # as if stopped before model/ was rewritten
    restore()
    train(get_config("restr-tiny", **MODEL), run_config, run, resume=True)
    assert next(scores, None) is None  # all four evaluations ran
    kept = load_checkpoint(best)
    assert kept["step"] == 4 and kept["best_overall_iou"] == 0.6
    deployed = Predictor.from_checkpoint(run / "model", device="cpu").model.state_dict()
    for name, tensor in kept["model"].items():  # model/ holds the best
        assert torch.equal(deployed[name], tensor), name


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it_over(data_root, tmp_path, monkeypatch, capsys):
    """Started over: the log, best.pt and model/ of the lost steps go; the new run's best is its own."""
    run = tmp_path / "run"
    args = cli_train_args(data_root, run, 3, "--eval-every", "1", "--log-every", "1")
    scores = scored_evaluations(monkeypatch, [0.9, 0.5, 0.4, 0.3])  # the lost step 1; then steps 1 to 3
    restore = crash_in_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert {p.name for p in run.iterdir()} == {"config.yaml", "vocab.txt", "log.jsonl", "checkpoints", "model"}
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["best.pt"]  # no checkpoint to resume from
    restore()
    assert main(args) == 2
    assert "stopped before its first checkpoint: --resume starts it over" in capsys.readouterr().err
    crash_in_step(monkeypatch, 1)  # the restarted run stops too, before its first evaluation
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--resume"])  # the command of a requeued job
    assert re.search("warning: --resume: .* stopped before its first checkpoint .* starts over from step 0",
                     capsys.readouterr().err)
    assert not (run / "model").exists() and list((run / "checkpoints").iterdir()) == []  # the lost steps' best
    restarted = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [sorted(record) for record in restarted] == [["started", "step", "train_samples", "val_samples"]]  # the lost steps' records gone
    restore()
    assert main(args + ["--resume"]) == 0
    assert next(scores, None) is None
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # step 1 once, from the new start
    assert [r["overall_iou"] for r in records if "eval" in r] == [0.5, 0.4, 0.3]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] == 1 and best["best_overall_iou"] == 0.5  # the new run's, not the lost 0.9
    deployed = Predictor.from_checkpoint(run / "model", device="cpu").model.state_dict()
    assert all(torch.equal(deployed[name], tensor) for name, tensor in best["model"].items())
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 3
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(get_config("restr-tiny", **MODEL), config(data_root), tmp_path / "empty", resume=True)
    capsys.readouterr()


def test_resume_starts_over_a_run_stopped_between_its_first_checkpoint_steps_log_and_its_save(
        data_root, tmp_path, monkeypatch, capsys):
    trainer = importlib.import_module("restr_fast.training.trainer")
    real = trainer.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("stopped in the evaluation before the first checkpoint's save")
    monkeypatch.setattr(trainer, "evaluate", interrupted)
    run = tmp_path / "run"
    args = cli_train_args(data_root, run, 2, "--eval-every", "2", "--checkpoint-every", "2", "--log-every", "1")
    with pytest.raises(KeyboardInterrupt):
        main(args)
    assert '"step": 2' in (run / "log.jsonl").read_text() and not (run / "checkpoints" / "latest.pt").exists()
    monkeypatch.setattr(trainer, "evaluate", real)
    assert main(args + ["--resume"]) == 0
    assert "starts over from step 0" in capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2


def test_resume_refuses_to_start_over_a_run_whose_checkpoint_went_missing(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = cli_train_args(data_root, run, 3, "--eval-every", "1", "--checkpoint-every", "2")
    assert main(args) == 0
    (run / "checkpoints" / "latest.pt").unlink()  # deleted to save space, say
    kept = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert main(args + ["--resume"]) == 2
    error = capsys.readouterr().err
    assert f"latest.pt is missing, but {run}'s log records its checkpoint of step 3" in error
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == kept  # best.pt, model/, log
    stopped = tmp_path / "stopped"  # its only checkpoint: where --stop-after ended it
    args[args.index(str(run))] = str(stopped)
    args[args.index("--checkpoint-every") + 1] = "1000"
    assert main(args + ["--stop-after", "1"]) == 0
    (stopped / "checkpoints" / "latest.pt").unlink()
    assert main(args + ["--resume"]) == 2
    assert "log records its checkpoint of step 1" in capsys.readouterr().err
    assert (stopped / "checkpoints" / "best.pt").is_file() and (stopped / "model").is_dir()


def test_resume_refuses_to_start_over_a_run_of_an_older_log_past_its_checkpoint(data_root, tmp_path, capsys):
    """A log written before logs recorded starts and checkpoints: a step that saved one counts."""
    run = tmp_path / "run"
    args = cli_train_args(data_root, run, 3, "--eval-every", "1", "--checkpoint-every", "2")
    assert main(args + ["--stop-after", "2"]) == 0
    log = run / "log.jsonl"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()
                           if "started" not in line and "checkpoint" not in line))
    (run / "checkpoints" / "latest.pt").unlink()
    kept = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert main(args + ["--resume"]) == 2
    assert f"{run} logged step 2, which its checkpoints (every 2 steps, and at its last, 3) reached" in \
        capsys.readouterr().err
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == kept


def test_the_same_command_resumes_a_run_whose_flags_override_its_yaml_config(data_root, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "restr-tiny", "model_overrides": {"image_size": 48},
                                      "train": {"seed": 0, "dataset": "refcoco", "steps": 2}}))
    run = tmp_path / "run"
    args = ["train", "--config", str(recipe), "--data-root", str(data_root), "--dataset", "synthetic", "--seed", "1",
            "--img-size", "32", "--out", str(run), "--batch-size", "2", "--device", "cpu", "--workers", "0",
            "--eval-every", "100"]
    assert main(args + ["--stop-after", "1"]) == 0
    assert main(args + ["--resume"]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert main([value if value != "32" else "64" for value in args] + ["--resume"]) == 2
    assert "--img-size differs from" in capsys.readouterr().err  # the flag alone, not --config too
    assert main(["train", "--config", str(recipe), "--out", str(run), "--resume"]) == 2  # seed 0, refcoco
    assert "--config differs from" in capsys.readouterr().err


def test_resume_with_new_settings_keeps_them(data_root, tmp_path, capsys):
    """A resumed run given another --lr trains with it from there on, and another --steps holds for the
    next --resume too."""
    run = tmp_path / "run"
    args = cli_train_args(data_root, run, 4, "--eval-every", "100", "--checkpoint-every", "1", "--log-every", "1",
                          "--lr", "1e-3")
    assert main(args + ["--stop-after", "2", "--grad-checkpointing"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["grad_checkpointing"] is True
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("weight_decay: 0.0005",
                                                                               "weight_decay: 0.05"))
    assert main(["train", "--out", str(run), "--resume", "--lr", "1e-2", "--steps", "8", "--stop-after", "2",
                 "--batch-size", "3", "--no-grad-checkpointing"]) == 0
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert [group["weight_decay"] for group in state["optimizer"]["param_groups"]] == [0.0, 0.05, 0.0, 0.05]
    assert state["step"] == 4 and state["train"]["lr"] == 1e-2 and state["train"]["steps"] == 8
    assert state["samples_seen"] == 2 * 2 + 2 * 3  # where the next invocation's batches start
    assert state["scheduler"]["base_lrs"] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])  # the vision encoder's: a tenth
    factor = (1 - 3 / 7) ** 0.9  # after step 4 of 8, one of them warm-up
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == pytest.approx(
        [1e-2 * factor, 1e-2 * factor, 1e-3 * factor, 1e-3 * factor])
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["lr"] == 1e-2 and saved["steps"] == 8 and saved["stop_after"] is None
    assert saved["grad_checkpointing"] is False  # a flag turns off what the run had set
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["lr"] == pytest.approx(1e-2 * (1 - 1 / 7) ** 0.9)  # the new lr from the first resumed step
    assert main(["train", "--out", str(run), "--resume"]) == 0  # to step 8, as the last invocation said
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 8 and state["samples_seen"] == 2 * 2 + 6 * 3
    capsys.readouterr()


def test_resume_with_new_steps_trains_the_first_step_on_the_new_schedule(data_root, tmp_path, monkeypatch):
    """The optimizer's lr in the first resumed step follows the new --steps (the checkpoint's was set
    by the old schedule), not only the logged one."""
    trainer = importlib.import_module("restr_fast.training.trainer")
    used = []  # the lr of the first parameter group in each optimizer step

    def recording(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        optimizer.register_step_pre_hook(lambda opt, *_: used.append(opt.param_groups[0]["lr"]))
        return optimizer
    real_build = trainer.build_optimizer
    monkeypatch.setattr(trainer, "build_optimizer", recording)
    run = tmp_path / "run"
    args = cli_train_args(data_root, run, 4, "--eval-every", "100", "--lr", "1e-3", "--stop-after", "2")
    assert main(args) == 0
    assert main(["train", "--out", str(run), "--resume", "--steps", "8", "--stop-after", "1"]) == 0
    new_schedule = trainer.warmup_poly_schedule(torch.optim.SGD([torch.zeros(1)], lr=1e-3), 8, 0.1, 0.9)
    assert used[2] == pytest.approx(1e-3 * new_schedule.lr_lambdas[0](2))  # (1 - 1/7) ** 0.9, not (1 - 1/3) ** 0.9


def test_resume_of_a_checkpoint_without_samples_seen_counts_its_saved_batch_size(data_root, tmp_path, capsys):
    """Checkpoints before samples_seen: their steps drew the batch size they saved, whatever this
    invocation's --batch-size is."""
    run = tmp_path / "run"
    assert main(cli_train_args(data_root, run, 4, "--eval-every", "100", "--stop-after", "2")) == 0
    latest = run / "checkpoints" / "latest.pt"
    older = load_checkpoint(latest)
    del older["samples_seen"]
    save_checkpoint(latest, older)
    assert main(["train", "--out", str(run), "--resume", "--batch-size", "3", "--stop-after", "1"]) == 0
    assert load_checkpoint(latest)["samples_seen"] == 2 * 2 + 1 * 3
    capsys.readouterr()


def test_gpu_random_state_is_saved_for_the_training_gpu_and_restored_on_any(monkeypatch):
    """One GPU state, the training device's; older checkpoints held one per visible GPU, and resume
    on a machine with fewer GPUs than they list (stand-in torch.cuda random-state functions)."""
    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[device.index].clone())
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state), device.index)))
    saved = rng_state(torch.device("cuda", 1))
    assert torch.equal(saved["cuda"], states[1])
    set_rng_state(saved, torch.device("cuda", 0))  # resumed on another GPU
    older = {**saved, "cuda": (states[0], states[1])}
    set_rng_state(older, torch.device("cuda", 1))
    set_rng_state(older, torch.device("cuda", 3))  # saved where two GPUs were visible: nothing to restore
    set_rng_state(older, torch.device("cpu"))
    assert restored == [(1, 0), (1, 1)]
    assert "cuda" not in rng_state(torch.device("cpu"))


def test_throughput_leaves_out_evaluation_and_saving(data_root, tmp_path, monkeypatch):
    """On a stand-in clock: each training step takes a second, each evaluation and save 1000."""
    import importlib
    trainer = importlib.import_module("restr_fast.training.trainer")
    now = [0.0]

    def taking(seconds, fn):
        def timed(*args, **kwargs):
            now[0] += seconds
            return fn(*args, **kwargs)
        return timed

    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(trainer, "loss_terms", taking(1.0, trainer.loss_terms))
    for name in ("evaluate", "save_checkpoint", "save_model_folder"):
        monkeypatch.setattr(trainer, name, taking(1000.0, getattr(trainer, name)))
    train(get_config("restr-tiny", **MODEL), config(data_root, log_every=1), tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {r["step"]: r["images_per_s"] for r in records if "loss" in r} == {step: 4.0 for step in range(1, 7)}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    change_loss(monkeypatch, lambda step, output, terms: terms._replace(total=terms.total * float("nan"))
                if step > 4 else terms)
    with pytest.raises(TrainingDiverged, match="the loss became nan by step 6"):
        train(get_config("restr-tiny", **MODEL), config(data_root), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert state["step"] == 3 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_weights_broken_by_a_checkpoint_steps_update_are_never_saved(data_root, tmp_path, monkeypatch):
    """A finite loss whose gradient is not (d sqrt(x)/dx at 0): the loss is computed before the
    update, so the weights are checked before a checkpoint or an evaluation takes them."""
    def nan_gradient(step, output, terms):  # step 6, a checkpoint and evaluation step: the same loss, a nan gradient
        return terms._replace(total=terms.total + (output.pixel_logits.sum() * 0).sqrt()) if step == 6 else terms

    change_loss(monkeypatch, nan_gradient)
    with pytest.raises(TrainingDiverged, match="the weights became nan or infinite by step 6"):
        train(get_config("restr-tiny", **MODEL), config(data_root), tmp_path / "run")
    for name in ("latest.pt", "best.pt"):
        state = load_checkpoint(tmp_path / "run" / "checkpoints" / name)
        assert state["step"] == 3 and all(torch.isfinite(t).all() for t in state["model"].values()), name


def test_bad_input_fails_before_anything_is_written(data_root, tmp_path):
    model_config = get_config("restr-tiny", **MODEL)
    with pytest.raises(FileNotFoundError, match=r"refs file not found: .*refs\(google\).p"):
        train(model_config, config(data_root, split_by="google"), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        train(model_config, config(data_root, val_split="dev"), tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(model_config, config(data_root), tmp_path / "c", resume=True)
    assert not any(tmp_path.iterdir())
    (tmp_path / "d" / "checkpoints").mkdir(parents=True)
    (tmp_path / "d" / "checkpoints" / "latest.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint .*latest.pt: not a zip archive"):
        train(model_config, config(data_root), tmp_path / "d", resume=True)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a restr_fast checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {}, "optimizer_class": torch.optim.AdamW}, tmp_path / "pickled.pt")  # not plain data
    with pytest.raises(ValueError, match="not a checkpoint restr-fast wrote") as error:
        load_checkpoint(tmp_path / "pickled.pt")
    assert "weights_only" not in str(error.value)  # torch's advice to load it unsafely is not passed on
    (tmp_path / "a-file").write_text("kept")
    with pytest.raises(ValueError, match="the run folder .*a-file is a file"):
        train(model_config, config(data_root), tmp_path / "a-file")


def test_cli_train_resume_and_evaluate(data_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = cli_train_args(data_root, run, 4, "--eval-every", "4", "--checkpoint-every", "2")
    assert main(args + ["--stop-after", "1"]) == 0
    assert "continue with --resume" in capsys.readouterr().out
    assert main(args + ["--resume", "--stop-after", "1"]) == 0  # the same command resumes (a requeued job)
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert main(["train", "--out", str(run), "--resume", "--steps", "2"]) == 2  # not complete: no last evaluation
    assert "has trained 2 of its 4 steps, without a last step's evaluation" in capsys.readouterr().err
    saved = (run / "config.yaml").read_text()
    assert "stop_after: null" in saved  # it ends an invocation, not the run
    (run / "config.yaml").write_text(saved.replace("stop_after: null", "stop_after: 1"))  # as versions before wrote it
    assert main(["train", "--out", str(run), "--resume"]) == 0  # to the end in one go
    assert "val overall IoU" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert f"the run in {run} is complete (4 steps): nothing to resume" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 2
    assert "has trained 4 steps, more than steps=3: nothing to resume" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--steps", "0"]) == 2  # the flag's value, not the file's
    assert "error: steps must be >= 1, got 0" in capsys.readouterr().err
    kept = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(kept.replace("log_every: ", "log_every: -"))
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert f"error: {run / 'config.yaml'}: log_every must be >= 1" in capsys.readouterr().err
    (run / "config.yaml").write_text(kept)
    assert main(["train", "--out", str(run), "--resume", "--img-size", "64", "--seed", "3"]) == 2
    assert "--img-size, --seed differ from" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--config", "restr-b16"]) == 2
    assert "--config differs from" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--train-split", "train+val", "--val-split", "val"]) == 2
    assert "--train-split differs from" in capsys.readouterr().err  # --val-split repeats the run's
    again = tmp_path / "again"  # a run folder's config.yaml starts a new run like it
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(again), "--steps", "1"]) == 0
    assert yaml.safe_load((again / "config.yaml").read_text())["model"] == yaml.safe_load(saved)["model"]
    capsys.readouterr()
    assert main(args) == 2  # the folder holds a run
    assert "already holds a run" in capsys.readouterr().err
    evaluate = ["evaluate", "--data-root", str(data_root), "--dataset", "synthetic", "--split", "testA", "--device", "cpu"]
    for wrong, message in ((["--json", str(tmp_path / "nowhere" / "m.json")], "does not exist; create it first"),
                           (["--limit", "0"], "--limit must be >= 1"), (["--device", "foo"], "unknown device 'foo'"),
                           (["--json", str(run / "checkpoints" / "best.pt")], "expected a file name ending in .json"),
                           (["--json", str(run / "model" / "config.json")], "is in a model folder"),
                           (["--batch-size", "0"], "--batch-size must be >= 1 and --workers >= 0, got 0 and 0")):
        before = {p: p.read_bytes() for p in (run / "checkpoints" / "best.pt", run / "model" / "config.json")}
        assert main(evaluate + ["--checkpoint", str(run)] + wrong) == 2
        assert message in capsys.readouterr().err
        assert before == {p: p.read_bytes() for p in before}  # what it evaluates is never written over
    out = tmp_path / "metrics.json"
    trained = Predictor.from_checkpoint(run / "model", device="cpu")
    bf16 = Predictor(trained.model.to(torch.bfloat16), trained.vocabulary).save(tmp_path / "bf16")
    for checkpoint in (run, run / "model", bf16):  # a run folder and model folders, as predict takes them
        assert main(evaluate + ["--checkpoint", str(checkpoint), "--limit", "3"]) == 0
        assert "| all | 3 |" in capsys.readouterr().out
    for checkpoint in (run, run / "checkpoints" / "best.pt"):  # the run's data, where it is recorded
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--split", "testA", "--limit", "3"]) == 0
        assert "synthetic (unc) testA" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(run / "model"), "--split", "testA"]) == 2
    assert "--data-root and --dataset are required: " in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint not found: " in capsys.readouterr().err
    shutil.copytree(data_root / "images" / "synthetic", tmp_path / "moved")
    assert main(evaluate + ["--checkpoint", str(run), "--limit", "3", "--sentence", "circle", "--attention", "math",
                            "--image-root", str(tmp_path / "moved")]) == 0
    assert "synthetic (unc) testA, every sentence = 'circle'" in capsys.readouterr().out
    assert main(evaluate + ["--checkpoint", str(run), "--image-root", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert "images of split 'testA' of synthetic (unc) are missing, e.g. " in error
    assert f"is {tmp_path / 'nowhere'} their folder?" in error  # the --image-root given
    (tmp_path / "config.json").write_text('{"name": "a project of the user"}')  # not a model folder
    assert main(evaluate + ["--checkpoint", str(run / "checkpoints" / "best.pt"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"overall_iou", "mean_iou", "precision", "samples", "empty_targets", "by_length",
                           "wordless_left_out"}
    assert result["empty_targets"] == 0 and result["wordless_left_out"] == 0
    assert sum(bucket["samples"] for bucket in result["by_length"].values()) == result["samples"]  # each in one
    assert set(result["precision"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert "| all |" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--data-root", str(data_root),
                 "--dataset", "synthetic"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_evaluation_limit_takes_a_fixed_random_subset(data_root, monkeypatch):
    chosen = []

    class RecordedSubset(torch.utils.data.Subset):
        def __init__(self, dataset, indices):
            chosen.append(list(indices))
            super().__init__(dataset, indices)
    monkeypatch.setattr(importlib.import_module("restr_fast.training.evaluate"), "Subset", RecordedSubset)
    model = build_model(get_config("restr-tiny", **MODEL))
    vocabulary = Vocabulary.from_sentences(sentences_of(data_root, "synthetic", "unc", "train"))
    dataset = ReferDataset(data_root, "synthetic", "unc", "val", vocabulary, 32, originals=True)
    results = [evaluate(model, dataset, torch.device("cpu"), batch_size=4, limit=5) for _ in range(2)]
    assert results[0] == results[1] and results[0]["samples"] == 5
    assert chosen[0] == chosen[1] and len(set(chosen[0])) == 5 and chosen[0] != list(range(5))
    evaluate(model, dataset, torch.device("cpu"), batch_size=4, limit=len(dataset) + 1)
    assert chosen[-1] == list(range(len(dataset)))


def run_two_processes(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 args`` (a free port of its own) in a process group
    of its own, killed whole, workers included, if it overruns ``timeout``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_ddp_on_two_processes_equals_one_process_with_the_global_batch(data_root, tmp_path):
    common = ["--config", "restr-tiny", "--data-root", str(data_root), "--dataset", "synthetic", "--steps", "3",
              "--img-size", "32", "--device", "cpu", "--workers", "0", "--eval-every", "100", "--lr", "1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "restr_fast.cli", "train", *common, "--batch-size", "4",
                             "--out", str(tmp_path / "single")], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run_two_processes(["-m", "restr_fast.cli", "train", *common, "--batch-size", "2", "--out", str(tmp_path / "ddp")],
                            env)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = (parameters(tmp_path / name / "checkpoints" / "latest.pt") for name in ("single", "ddp"))
    # rank 0 logs the mean loss of all ranks: the loss of the single process's global batch
    logged = [[json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()
               if "loss" in line][0] for name in ("single", "ddp")]
    assert logged[1]["step"] == logged[0]["step"] == 3
    assert logged[1]["loss"] == pytest.approx(logged[0]["loss"], rel=1e-3)
    # Summing the gradient in two halves rounds differently. Adam divides each update by the
    # gradient's own scale, so where the exact gradient is zero (the key bias of attention, which
    # the softmax ignores) the update is that rounding, normalised: up to a few percent of a step
    # of lr = 1e-3 (measured: 2.4e-5). atol = 1e-4, a tenth of one step, bounds this; any real
    # difference in data or gradients moves parameters by whole steps.
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-4, atol=1e-4, msg=name)

    # evaluation on two processes: each scores a shard, the metrics are reduced, rank 0 reports them
    evaluate = ["-m", "restr_fast.cli", "evaluate", "--checkpoint", str(tmp_path / "single" / "checkpoints" / "latest.pt"),
                "--data-root", str(data_root), "--dataset", "synthetic", "--split", "val", "--device", "cpu",
                "--workers", "0"]
    alone = subprocess.run([sys.executable, *evaluate, "--json", str(tmp_path / "alone.json")],
                           capture_output=True, text=True, env=env)
    assert alone.returncode == 0, alone.stderr[-2000:]
    shared = run_two_processes([*evaluate, "--json", str(tmp_path / "shared.json")], env)
    assert shared.returncode == 0, shared.stderr[-2000:]
    assert shared.stdout.count("| all |") == 1  # printed once, by rank 0
    alone_metrics, shared_metrics = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("alone", "shared"))
    assert shared_metrics["samples"] == alone_metrics["samples"]
    assert shared_metrics["overall_iou"] == pytest.approx(alone_metrics["overall_iou"], rel=1e-5)


DIVERGING_RANK = r"""
import importlib, json, os, sys
from restr_fast import get_config
from restr_fast.training import TrainConfig, TrainingDiverged, train

trainer = importlib.import_module("restr_fast.training.trainer")
real, calls = trainer.loss_terms, [0]


def poisoned(output, masks, model_config):  # rank 1's loss turns NaN at step 5; rank 0's only after the update
    calls[0] += 1
    terms = real(output, masks, model_config)
    return terms._replace(total=terms.total * float("nan")) if os.environ["RANK"] == "1" and calls[0] == 5 else terms


trainer.loss_terms = poisoned
model, train_config, out = json.loads(sys.argv[1])
try:
    train(get_config("restr-tiny", **model), TrainConfig(**train_config), out)
except TrainingDiverged as error:
    print(f"rank {os.environ['RANK']} stopped: {error}")
"""


def test_ddp_ranks_stop_together_when_one_rank_diverges(data_root, tmp_path):
    """Every rank checks the mean loss of all ranks, so all stop at the step where any diverged
    (rather than the others waiting for it in the next gradient all-reduce)."""
    settings = {**dataclasses.asdict(config(data_root, log_every=1, batch_size=2)), "device": "cpu"}
    script = tmp_path / "diverging_rank.py"
    script.write_text(DIVERGING_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_two_processes([str(script), json.dumps([MODEL, settings, str(tmp_path / "run")])], env)
    assert result.returncode == 0, result.stderr[-2000:]
    for rank in (0, 1):
        assert f"rank {rank} stopped: the loss became nan by step 5" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("setting, message", [
    ("steps: ten", "steps must be int, got 'ten'"),
    ("power: -1", "lr must be > 0 and power >= 0"),
    ("lr: 0", "lr must be > 0 and power >= 0"),
    ("warmup_fraction: 1.5", "warmup_fraction must be in [0, 1]"),
    ("amp: off", "amp must be str, got False (YAML reads off, on, yes and no as true or false: quote them)"),
    ("lr: 1e999999", "lr must be a finite number"),
    ("lr: .nan", "lr must be a finite number"),
    ("grad_checkpointing: 1", "grad_checkpointing must be bool"),
    ("device: foo", "unknown device 'foo'"),
])
def test_run_config_settings_are_checked(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**yaml.safe_load(setting))


def test_run_config_reads_yaml_text_numbers_and_paths():
    values = yaml.safe_load("lr: 1e-3\nweight_decay: 0")  # YAML 1.1: '1e-3' is a string, 0 an int
    assert isinstance(values["lr"], str)
    config = TrainConfig(**values)
    assert config.lr == 1e-3 and isinstance(config.weight_decay, float)
    assert TrainConfig(data_root=Path("data")).data_root == "data"  # paths as the Python API may give them
    edges = TrainConfig(power=0, warmup_fraction=1.0, weight_decay=0, steps=np.int64(5), device=torch.device("cpu"))
    assert edges.steps == 5 and type(edges.steps) is int and edges.device == "cpu"  # numpy ints, torch devices


def test_cli_names_a_broken_run_config(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: [unclosed\n")
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "is not a run config written by restr-fast train" in capsys.readouterr().err
