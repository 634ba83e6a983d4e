"""Predictor: equal to forward + threshold + back-mapping, batching, threads, model folders, bad input, CLI."""
import copy
import json
import os
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from restr_fast import Predictor, build_model
from restr_fast.cli import main
from restr_fast.predictor import resolve_dtype
from restr_fast.data.transforms import letterbox_image, unletterbox
from restr_fast.text import UNK_INDEX, Vocabulary
from restr_fast.training import save_checkpoint

requires_gpu = pytest.mark.gpu(reason="needs a CUDA GPU (fast path, bf16)")

SENTENCES = ["the red circle left of the blue square", "big green triangle on the right",
             "a small yellow square", "the shape in the middle"]


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary.from_sentences(SENTENCES)


@pytest.fixture(scope="module")
def model(vocabulary):
    torch.manual_seed(0)
    return build_model("restr-tiny", vocab_size=len(vocabulary)).eval()  # 64x64, patch 8, reference path


@pytest.fixture(scope="module")
def predictor(model, vocabulary):
    return Predictor(model, vocabulary)


def random_image(height, width, seed=0, channels=3):
    shape = (height, width, channels) if channels else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def reference(model, vocabulary, image, text):
    """Model forward on the letterboxed image, logits mapped back, thresholded at 0."""
    inputs, box = letterbox_image(image, model.config.image_size)
    with torch.no_grad():
        logits = model(inputs[None], vocabulary.encode(text)[None]).pixel_logits  # (1, 1, S, S)
    restored = unletterbox(logits[0, 0], box)  # (H, W)
    return restored > 0, restored.sigmoid()


def assert_same(prediction, expected):
    """Bit for bit: the same computation."""
    assert torch.equal(prediction.mask, expected.mask)
    assert torch.equal(prediction.probability, expected.probability)


def assert_same_in_another_batch(prediction, expected):
    """Equal up to fp32 rounding: matrix products over another batch size round differently (the CPU
    BLAS blocks by size). The mask must agree wherever the probability is not within rounding of 0.5."""
    torch.testing.assert_close(prediction.probability, expected.probability)
    decided = (expected.probability - 0.5).abs() > 1e-5
    assert decided.float().mean() > 0.99
    assert torch.equal(prediction.mask[decided], expected.mask[decided])


@pytest.mark.parametrize("height, width", [(50, 80), (80, 50), (64, 64), (33, 97)])
def test_predict_is_forward_threshold_and_back_mapping(predictor, model, vocabulary, height, width):
    image = random_image(height, width, seed=height)
    prediction = predictor.predict(image, SENTENCES[0])
    mask, probability = reference(model, vocabulary, Image.fromarray(image), SENTENCES[0])
    assert prediction.mask.shape == (height, width) and prediction.mask.dtype == torch.bool
    assert prediction.probability.dtype == torch.float32
    assert torch.equal(prediction.mask, mask) and torch.equal(prediction.probability, probability)
    assert 0 < prediction.mask.float().mean() < 1  # a real threshold, not a constant mask
    prediction.mask[0, 0] = True  # ordinary tensors (not inference mode's): editable, usable as targets
    prediction.probability.clamp_(0.01, 0.99)
    logits = torch.zeros(height, width, requires_grad=True)
    F.binary_cross_entropy_with_logits(logits, prediction.probability).backward()


def test_every_image_type_gives_the_same_prediction(predictor, tmp_path):
    image = random_image(40, 70, seed=3)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    expected = predictor.predict(image, SENTENCES[1])
    tensor = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W)
    for same in (str(path), path, Image.open(path), tensor, tensor.float() / 255):
        assert_same(predictor.predict(same, SENTENCES[1]), expected)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are shown turned 90 degrees clockwise
    turned = tmp_path / "turned.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(turned, exif=exif)  # stored counter-clockwise
    assert_same(predictor.predict(turned, SENTENCES[1]), expected)  # a file: on the photo as viewers show it
    stored = predictor.predict(Image.open(turned), SENTENCES[1])  # a PIL image: as it is
    assert tuple(stored.mask.shape) == (70, 40)


def test_a_list_of_pairs_equals_the_pairs_one_by_one(model, vocabulary):
    images = [random_image(50, 80, seed=1), random_image(64, 64, seed=2), random_image(33, 97, seed=3),
              random_image(80, 50, seed=4), random_image(20, 30, seed=5)]
    texts = SENTENCES + ["the red one"]
    for max_batch in (32, 2):  # one pass, and three passes
        predictor = Predictor(model, vocabulary, max_batch=max_batch)
        batched = predictor.predict(images, texts)
        assert isinstance(batched, list) and len(batched) == 5
        for image, text, prediction in zip(images, texts, batched):
            assert_same_in_another_batch(prediction, predictor.predict(image, text))


def test_one_image_with_several_sentences_runs_the_vision_encoder_once(predictor, model):
    image = random_image(48, 64, seed=7)
    batches = []
    hook = model.vision.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        together = predictor.predict(image, SENTENCES)
        assert batches == [1]
        pairs = predictor.predict([image] * 4, SENTENCES)  # the same image object in a list of pairs
        assert batches == [1, 1]
    finally:
        hook.remove()
    for text, prediction, pair in zip(SENTENCES, together, pairs):
        alone = predictor.predict(image, text)
        assert_same_in_another_batch(prediction, alone)
        assert_same(pair, prediction)  # the same batch of four


def test_two_threads_predicting_at_once_get_their_own_results(predictor):
    work = [([random_image(40 + 10 * t, 60, seed=t)] * 2, SENTENCES[2 * t: 2 * t + 2]) for t in range(2)]
    expected = [predictor.predict(images, texts) for images, texts in work]
    results, errors = [[], []], []
    start = threading.Barrier(2)

    def run(t):
        try:
            start.wait()
            for _ in range(4):
                results[t].append(predictor.predict(*work[t]))
        except Exception as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for t in range(2):
        assert len(results[t]) == 4
        for result in results[t]:
            for prediction, want in zip(result, expected[t]):
                assert_same(prediction, want)


def test_save_and_from_checkpoint_give_identical_predictions(predictor, model, vocabulary, tmp_path):
    image = random_image(50, 80, seed=11)
    expected = predictor.predict(image, SENTENCES[0])
    folder = predictor.save(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "vocab.txt"}
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights readable like the other files (umask's mode)
    predictor.save(folder)  # an existing model folder is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    loaded = Predictor.from_checkpoint(folder, device="cpu", fast=False)
    assert loaded.vocabulary == vocabulary and loaded.config == model.config and loaded.dtype == torch.float32
    assert_same(loaded.predict(image, SENTENCES[0]), expected)
    assert_same(Predictor.from_checkpoint(folder / "config.json", device="cpu", fast=False).predict(image, SENTENCES[0]),
                expected)

    # a training checkpoint, as a file and through its run folder
    state = {"model": model.state_dict(), "config": model.config.to_dict(), "vocabulary": vocabulary.words}
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", state)
    (tmp_path / "run" / "model").mkdir()  # not a model folder (yet): passed over for best.pt
    for path in (tmp_path / "run" / "checkpoints" / "best.pt", tmp_path / "run"):
        assert_same(Predictor.from_checkpoint(path, device="cpu", fast=False).predict(image, SENTENCES[0]), expected)

    fast = Predictor.from_checkpoint(folder, device="cpu")  # fast=True by default (kernels interpreted on the CPU)
    assert fast.config.fast and not model.config.fast
    assert_same_in_another_batch(fast.predict(image, SENTENCES[0]), expected)  # fused kernels round differently


def test_a_model_saved_with_xformers_attention_runs_anywhere(model, vocabulary, tmp_path, capsys):
    """The attention backend is the predictor's choice (auto by default), not the training machine's."""
    folder = Predictor(model.__class__(model.config.replace(attention="xformers")), vocabulary).save(tmp_path / "m")
    loaded = Predictor.from_checkpoint(folder, device="cpu", fast=False)
    assert loaded.config.attention == "auto"
    assert loaded.predict(random_image(20, 30), SENTENCES[0]).mask.shape == (20, 30)
    assert Predictor.from_checkpoint(folder, device="cpu", fast=False, attention="math").config.attention == "math"
    with pytest.raises(ValueError, match="attention backend 'xformers' is not available on cpu"):  # at load
        Predictor.from_checkpoint(folder, device="cpu", attention="xformers")
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        Predictor.from_checkpoint(folder, device="cpu", attention="flash")
    Image.fromarray(random_image(20, 30)).save(tmp_path / "photo.png")
    assert main(["predict", "--checkpoint", str(folder), "--image", str(tmp_path / "photo.png"), "--device", "cpu",
                 "--text", SENTENCES[0], "--out", str(tmp_path / "mask.png")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("weights, other", [(torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16)])
def test_low_precision_weights_run_under_autocast_in_their_dtype(model, vocabulary, tmp_path, weights, other):
    half = build_model(model.config)
    half.load_state_dict(model.state_dict())
    half = half.to(weights)
    predictor = Predictor(half, vocabulary)
    assert predictor.dtype == weights  # auto: the weights' dtype
    expected = predictor.predict(random_image(20, 30), SENTENCES[0])
    assert expected.mask.shape == (20, 30)
    for device in ("cpu", "cuda"):  # on a GPU too, rather than bf16 with any weights
        assert resolve_dtype("auto", torch.device(device), weights) == weights
    with pytest.raises(ValueError, match="dtype float32 runs without autocast, but the model's weights are"):
        Predictor(half, vocabulary, dtype="float32")
    with pytest.raises(ValueError, match=f"runs under autocast in {other}, but the model's weights are {weights}"):
        Predictor(half, vocabulary, dtype=other)  # autocast would mix the two dtypes: an error deep inside
    with pytest.raises(ValueError, match="weights are"):
        Predictor(half, vocabulary, model.config.replace(fast=not model.config.fast), dtype=other)
    folder = predictor.save(tmp_path / "model")
    loaded = Predictor.from_checkpoint(folder, device="cpu", fast=model.config.fast)
    assert next(loaded.model.parameters()).dtype == weights and loaded.dtype == weights  # the folder's dtype
    assert_same(loaded.predict(random_image(20, 30), SENTENCES[0]), expected)
    wide = Predictor(half.float(), vocabulary, dtype="float32").predict(random_image(20, 30), SENTENCES[0])
    for dtype in ("float32", torch.float32):  # from a folder, the weights are widened (no model to cast)
        loaded = Predictor.from_checkpoint(folder, device="cpu", dtype=dtype, fast=model.config.fast)
        assert next(loaded.model.parameters()).dtype == torch.float32 and loaded.dtype == torch.float32
        assert_same(loaded.predict(random_image(20, 30), SENTENCES[0]), wide)
    assert Predictor.from_checkpoint(folder, device="cpu", dtype=other, fast=model.config.fast).dtype == other


def test_a_float32_predictor_runs_in_float32_inside_the_callers_autocast(predictor):
    """(On a GPU a CUDA graph captured there would otherwise keep bf16 for every later call.)"""
    image = random_image(20, 30)
    expected = predictor.predict(image, SENTENCES[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same(predictor.predict(image, SENTENCES[0]), expected)


@pytest.mark.parametrize("cast", ["double", "mixed"])
def test_weights_the_predictor_cannot_run_are_a_clear_error(model, vocabulary, cast):
    other = build_model(model.config)
    other.load_state_dict(model.state_dict())
    if cast == "double":
        other = other.double()
        expected = "the model's weights are float64: .* cast the model with model.float()"
    else:
        other.decoder.to(torch.bfloat16)
        expected = "the model's weights are bfloat16, float32: .* weights of one dtype"
    with pytest.raises(ValueError, match=expected):
        Predictor(other, vocabulary)


def test_a_model_of_other_than_three_image_channels_is_a_clear_error(vocabulary):
    gray = build_model("restr-tiny", vocab_size=len(vocabulary), in_chans=1)
    with pytest.raises(ValueError, match="images of 1 channels; the predictor feeds RGB images"):
        Predictor(gray, vocabulary)


def test_save_never_overwrites_a_folder_that_is_not_a_model(predictor, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes exists and is not a restr_fast model folder"):
        predictor.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("default_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_the_host_programs_default_dtype_changes_nothing(predictor, tmp_path, default_dtype):
    """A program that sets torch's default dtype gets the same model (float32 weights) and predictions."""
    folder = predictor.save(tmp_path / "model")
    image = random_image(20, 30)
    expected = Predictor.from_checkpoint(folder, fast=False).predict(image, SENTENCES[0]).probability
    torch.set_default_dtype(default_dtype)
    try:
        loaded = Predictor.from_checkpoint(folder, fast=False)
        assert {parameter.dtype for parameter in loaded.model.parameters()} == {torch.float32}
        for p in (loaded, predictor):
            assert torch.equal(p.predict(image, SENTENCES[0]).probability, expected)
    finally:
        torch.set_default_dtype(torch.float32)


def test_predictions_made_under_the_callers_inference_mode_are_ordinary_tensors(predictor):
    with torch.inference_mode():
        prediction = predictor.predict(random_image(20, 30), SENTENCES[0])
    assert not prediction.mask.is_inference() and not prediction.probability.is_inference()
    prediction.mask[0, 0] = True  # outside inference mode: editable in place
    prediction.probability.clamp_(0.1, 0.9)


def test_a_model_cast_or_moved_after_the_predictor_was_built_is_a_clear_error(model, vocabulary):
    predictor = Predictor(copy.deepcopy(model), vocabulary)
    predictor.model.vision.half()  # a part of it
    with pytest.raises(RuntimeError, match="the model's weights are now torch.float16 on cpu, torch.float32 on cpu, "
                                           "but this predictor was built for torch.float32 on cpu: build a new "
                                           "Predictor"):
        predictor.predict(random_image(20, 30), SENTENCES[0])
    predictor.model.half()
    with pytest.raises(RuntimeError, match="the model's weights are now torch.float16 on cpu, but this predictor was "
                                           "built for torch.float32 on cpu: build a new Predictor"):
        predictor.predict(random_image(20, 30), SENTENCES[0])


def test_a_vocabulary_must_fit_the_models_embedding_rows(predictor, tmp_path):
    """More words than rows: refused. Fewer: the predictor runs (the rows past its words are never
    read), but a model folder holds one row a word, so it cannot be saved as one."""
    narrower = build_model("restr-tiny", vocab_size=len(predictor.vocabulary) - 1)
    with pytest.raises(ValueError, match=f"the vocabulary has {len(predictor.vocabulary)} words but the model only "
                                         f"{len(predictor.vocabulary) - 1} embedding rows"):
        Predictor(narrower, predictor.vocabulary)
    wider = Predictor(build_model("restr-tiny", vocab_size=len(predictor.vocabulary) + 5), predictor.vocabulary)
    assert wider.predict(random_image(20, 30), SENTENCES[0]).mask.shape == (20, 30)
    with pytest.raises(ValueError, match="but the model .* embedding rows: build the model with vocab_size"):
        wider.save(tmp_path / "wider")  # a folder that could not be loaded
    assert not (tmp_path / "wider").exists()


def test_save_replaces_only_a_model_folder_holding_nothing_else(predictor, tmp_path, monkeypatch):
    foreign = tmp_path / "hf"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "vit"}')  # another library's model folder
    (foreign / "pytorch_model.bin").write_bytes(b"weights")
    with pytest.raises(ValueError, match="hf exists and is not a restr_fast model folder"):
        predictor.save(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json", "pytorch_model.bin"]

    folder = predictor.save(tmp_path / "model")
    (folder / ".DS_Store").write_bytes(b"Bud1")  # a file browser's, replaced with the folder (training's model/)
    assert predictor.save(folder) == folder and not (folder / ".DS_Store").exists()
    (folder / "NOTES.md").write_text("mine")
    with pytest.raises(ValueError, match=r"also holds \['NOTES.md'\], which replacing it would delete"):
        predictor.save(folder)
    assert (folder / "NOTES.md").read_text() == "mine"

    monkeypatch.chdir(tmp_path / "model")
    with pytest.raises(ValueError, match=". is the current working directory"):
        predictor.save(".")


def test_save_through_a_link_replaces_the_folder_it_points_to(predictor, tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "latest").symlink_to("v1")
    for _ in range(2):  # the second replaces the first's folder
        assert predictor.save(tmp_path / "latest") == tmp_path / "latest"
    assert (tmp_path / "latest").is_symlink()
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "v1"]  # nothing left behind
    assert Predictor.from_checkpoint(tmp_path / "latest", fast=False).vocabulary == predictor.vocabulary


def test_a_failed_replacement_keeps_the_previous_model_folder(predictor, tmp_path, monkeypatch):
    folder = predictor.save(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    rename = type(folder).rename

    def failing_rename(self, target):
        if self.name.startswith(".model.") and not self.name.startswith(".model.old."):
            raise OSError("disk full")  # the new folder cannot take the old one's place
        return rename(self, target)

    monkeypatch.setattr(type(folder), "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        predictor.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def to_mode(image, mode):
    """A PIL image of ``mode`` made from an RGB array."""
    rgb = Image.fromarray(image)
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)  # 16-bit grayscale
    if mode == "F":
        return rgb.convert("L").convert("F")  # float grayscale, on the 0..255 scale
    return rgb.convert(mode)


@pytest.mark.parametrize("mode, as_rgb", [
    ("L", lambda im: im.convert("RGB")),
    ("RGBA", lambda im: im.convert("RGB")),
    ("P", lambda im: im.convert("RGB")),
    ("I;16", lambda im: Image.fromarray((np.asarray(im) // 257).astype(np.uint8)).convert("RGB")),  # 0..65535 to 0..255
    ("F", lambda im: im.convert("L").convert("RGB")),
])
def test_grayscale_rgba_16_bit_float_and_palette_images_are_converted(predictor, tmp_path, mode, as_rgb):
    image = to_mode(random_image(30, 45, seed=5), mode)
    path = tmp_path / ("image.tiff" if mode == "F" else "image.png")  # PNG holds no floats
    image.save(path)
    expected = predictor.predict(as_rgb(image), SENTENCES[3])
    for same in (image, path):
        prediction = predictor.predict(same, SENTENCES[3])
        assert prediction.mask.shape == (30, 45)
        assert_same(prediction, expected)


def test_bad_images_are_clear_errors(predictor, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.png"):
        predictor.predict(tmp_path / "missing.png", "the red circle")
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        predictor.predict(tmp_path, "the red circle")
    Image.fromarray(random_image(30, 45)).save(tmp_path / "large.png")
    with monkeypatch.context() as patched:  # over twice PIL's bound: a DecompressionBombError, not an OSError
        patched.setattr(Image, "MAX_IMAGE_PIXELS", 600)
        with pytest.raises(ValueError, match="cannot read image .*large.png: .*raise PIL.Image.MAX_IMAGE_PIXELS"):
            predictor.predict(tmp_path / "large.png", "the red circle")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        predictor.predict(tmp_path / "broken.png", "the red circle")
    for empty in (np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 0)), torch.zeros(3, 4, 0, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="image has no pixels"):
            predictor.predict(empty, "the red circle")
    with Image.open(tmp_path / "large.png") as unread:
        pass
    read = Image.open(tmp_path / "large.png")
    read.load()
    read.close()
    for closed in (unread, read):
        with pytest.raises(ValueError, match=r"the PIL image is closed \(at the end of its `with Image.open"):
            predictor.predict(closed, "the red circle")
    with pytest.raises(TypeError, match=r"an image array must be uint8 .*, got float64: for values in \[0, 1\], pass "
                                        r"\(array \* 255\).round\(\).astype\(np.uint8\)"):
        predictor.predict(np.zeros((8, 8, 3)), "the red circle")
    with pytest.raises(TypeError, match="an image array must be uint8 .*, got int64$"):
        predictor.predict(np.zeros((8, 8, 3), dtype=np.int64), "the red circle")
    with pytest.raises(ValueError, match=r"must have shape \(H, W, 3\), got \(3, 8, 9\): channels come last in an "
                                         r"array, use array.transpose\(1, 2, 0\)"):
        predictor.predict(np.zeros((3, 8, 9), dtype=np.uint8), "the red circle")
    for dtype in (torch.bool, torch.int64):
        with pytest.raises(TypeError, match=rf"an image tensor must be uint8 \(0..255\) or float in \[0, 1\], got {dtype}"):
            predictor.predict(torch.zeros(3, 8, 8, dtype=dtype), "the red circle")
    with pytest.raises(ValueError, match=r"shape \(3, H, W\)"):
        predictor.predict(torch.zeros(1, 3, 8, 8), "the red circle")
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[-1, -1\]$"):
        predictor.predict(torch.full((3, 8, 8), -1.0), "the red circle")
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[0, 1.00001\]$"):  # not [0, 1]
        predictor.predict(torch.zeros(3, 8, 8).index_fill_(1, torch.tensor([3]), 1.00001), "the red circle")
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[0.5, 0.5\] and NaN"):
        predictor.predict(torch.full((3, 8, 8), 0.5).index_fill_(1, torch.tensor([3]), float("nan")), "the red circle")
    with pytest.raises(ValueError, match=r"got no numbers and NaN"):
        predictor.predict(torch.full((3, 8, 8), float("nan")), "the red circle")
    assert predictor.predict([], []) == [] and predictor.predict(random_image(8, 8), []) == []
    batched = Predictor(predictor.model, predictor.vocabulary, max_batch=2)
    with pytest.raises(FileNotFoundError, match="image 3 of the list not found: .*missing.png"):
        batched.predict([random_image(8, 8)] * 3 + [tmp_path / "missing.png"], "the red circle")  # before any batch
    with pytest.raises(ValueError, match=r"image 2 of the list: an image array must have shape \(H, W, 3\)"):
        batched.predict([random_image(8, 8), random_image(8, 8), np.zeros((3, 8, 9), np.uint8)], "the red circle")
    with pytest.raises(ValueError, match="lists must pair up"):
        predictor.predict([random_image(8, 8)] * 2, ["a", "b", "c"])


def test_text_errors_truncation_and_unknown_words(predictor, vocabulary):
    image = random_image(32, 48, seed=9)
    for text in ("", "   \t", "?!"):
        with pytest.raises(ValueError, match="has no words"):
            predictor.predict(image, text)
    with pytest.raises(TypeError, match="text must be a str"):
        predictor.predict(image, 42)

    words = ("the red circle left of the blue square and the big green triangle on the right of "
             "a small yellow square in the middle").split()
    assert len(words) > 20
    with pytest.warns(UserWarning, match="truncated to its first 20") as caught:
        long = predictor.predict(image, " ".join(words))
    assert caught[0].filename == __file__  # the caller's line, not the predictor's
    assert_same(long, predictor.predict(image, " ".join(words[:20])))

    tokens = vocabulary.encode("the zebra café ünïcödé")
    assert tokens[-3:].tolist() == [UNK_INDEX] * 3
    assert_same(predictor.predict(image, "the zebra café ünïcödé"), predictor.predict(image, "the qwerty asdf zxcv"))
    with pytest.warns(UserWarning, match="is in the model's vocabulary") as warned:
        assert_same(predictor.predict(image, "qwerty asdf zxcv"), predictor.predict(image, "zebra café ünïcödé"))
    assert [str(w.message).split(" is in")[0] for w in warned] == ["no word of 'qwerty asdf zxcv'",
                                                                     "no word of 'zebra café ünïcödé'"]


def test_checkpoints_of_another_model_are_clear_errors(predictor, model, vocabulary, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no restr_fast checkpoint"):
        Predictor.from_checkpoint(tmp_path / "empty")

    folder = predictor.save(tmp_path / "model")
    (folder / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['vocab.txt'\]"):
        Predictor.from_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['config.json', 'vocab.txt'\]"):
        Predictor.from_checkpoint(folder)

    folder = predictor.save(tmp_path / "other")
    header = json.loads((folder / "config.json").read_text())
    header["model"]["dim"] = 64  # another model's config beside these weights
    (folder / "config.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match=r"model.safetensors does not match .*config.json: .*shapes"):
        Predictor.from_checkpoint(folder, fast=False)
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 768}))
    with pytest.raises(ValueError, match="is not a restr_fast model config"):
        Predictor.from_checkpoint(folder)

    folder = predictor.save(tmp_path / "words")
    Vocabulary(["only", "two"]).save(folder / "vocab.txt")
    with pytest.raises(ValueError, match="has 6 words but .*vocab_size"):
        Predictor.from_checkpoint(folder)

    with pytest.raises(ValueError, match=r"weights.safetensors is a weights file alone: pass the model folder holding "
                                         r"it with its config.json and vocab.txt"):
        Predictor.from_checkpoint((folder / "model.safetensors").rename(tmp_path / "weights.safetensors"))
    torch.save(model.state_dict(), tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match=r"is not a restr_fast checkpoint \(expected a file written by restr-fast "
                                         r"train\) \(a bare state dict: load it into build_model"):
        Predictor.from_checkpoint(tmp_path / "state_dict.pt")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"is not a restr_fast checkpoint \(expected a file written by restr-fast "
                                         r"train\)$"):
        Predictor.from_checkpoint(tmp_path / "other.pt")

    (tmp_path / "weights.pt").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="cannot read checkpoint .*weights.pt: not a zip archive, as torch.save writes one"):
        Predictor.from_checkpoint(tmp_path / "weights.pt")

    other = build_model(model.config.replace(dim=64), fast=False)
    with pytest.raises(ValueError, match=r"differs from the model's config in \['dim'\]"):
        Predictor(model, vocabulary, other.config)
    fast = Predictor(model, vocabulary, model.config.replace(fast=True))  # implementation settings may differ
    assert fast.model is not model and fast.config.fast and not model.config.fast


def test_paths_starting_with_a_tilde_are_in_the_home_folder(predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert predictor.save("~/model") == tmp_path / "model" and (tmp_path / "model" / "config.json").is_file()
    Image.fromarray(random_image(20, 30)).save(tmp_path / "photo.png")
    loaded = Predictor.from_checkpoint("~/model", fast=False)
    assert torch.equal(loaded.predict("~/photo.png", SENTENCES[0]).probability,
                       predictor.predict(tmp_path / "photo.png", SENTENCES[0]).probability)


def test_overlay_tints_the_masked_region_and_dims_the_rest():
    from restr_fast import overlay

    image, mask = random_image(20, 30), np.zeros((20, 30), dtype=bool)
    mask[5:10, 3:8] = True
    shown = np.asarray(overlay(image, torch.from_numpy(mask)), dtype=np.float32)  # (20, 30, 3)
    pixels = image.astype(np.float32)
    assert np.array_equal(shown[~mask], (pixels[~mask] * 0.4).round())
    assert np.array_equal(shown[mask], (pixels[mask] * 0.5 + [127.5, 0.0, 0.0]).round())
    with pytest.raises(ValueError, match=r"mask of shape \(30, 20\) does not fit the image of shape \(20, 30\)"):
        overlay(image, mask.T)


def test_cli_predict_writes_masks_of_the_image_size(predictor, tmp_path, capsys):
    folder = predictor.save(tmp_path / "model")
    image = random_image(50, 80, seed=13)
    Image.fromarray(image).save(tmp_path / "photo.png")
    common = ["predict", "--checkpoint", str(folder), "--image", str(tmp_path / "photo.png"),
              "--device", "cpu", "--no-fast"]  # the same computation as the CPU predictor it is compared with

    assert main(common + ["--text", SENTENCES[0], "--out", str(tmp_path / "mask.png"),
                          "--overlay", str(tmp_path / "overlay.png")]) == 0
    mask = Image.open(tmp_path / "mask.png")
    assert mask.size == (80, 50) and mask.mode == "L"
    expected = predictor.predict(image, SENTENCES[0]).mask
    assert np.array_equal(np.asarray(mask) == 255, expected.numpy())
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert Image.open(tmp_path / "overlay.png").size == (80, 50)

    for suffix in (".bmp", ".tif"):  # the other lossless formats
        assert main(common + ["--text", SENTENCES[0], "--out", str(tmp_path / f"mask{suffix}")]) == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"mask{suffix}")) == 255, expected.numpy()), suffix
    assert main(common + ["--text", SENTENCES[1], "--text", SENTENCES[2], "--out", str(tmp_path / "m.png")]) == 0
    for number, text in enumerate(SENTENCES[1:3], start=1):
        written = np.asarray(Image.open(tmp_path / f"m_{number}.png")) == 255
        assert np.array_equal(written, predictor.predict(image, text).mask.numpy())
    assert "m_2.png" in capsys.readouterr().out

    os.link(tmp_path / "photo.png", tmp_path / "linked.png")
    for arguments, message in (
        (["--image", str(tmp_path / "absent.jpg")], "image not found"),
        (["--text", "   ", "--checkpoint", str(tmp_path / "nowhere")], "has no words"),  # before the model loads
        (["--checkpoint", str(tmp_path / "nowhere")], "checkpoint not found"),
        (["--out", str(tmp_path / "no-folder" / "m.png")], "does not exist; create it first"),
        (["--out", str(tmp_path / "mask")], "expected a file name ending in .png, .bmp"),
        (["--out", str(tmp_path / "mask.jpg")], "expected a file name ending in .png, .bmp"),  # lossy
        (["--out", str(tmp_path)], "is a folder: give a file name"),
        (["--out", str(tmp_path / "mask.png"), "--overlay", str(tmp_path / "overlay")], "--overlay"),
        (["--device", "foo"], "unknown device 'foo'"),
        (["--device", "mps"], "device 'mps' is not supported: use auto, cpu, cuda or cuda:N"),
        (["--out", str(tmp_path / "photo.png")], "is also --image's file"),  # the photo is never overwritten
        (["--overlay", str(tmp_path / "linked.png")], "is also --image's file"),  # nor through a hard link
        (["--out", str(tmp_path / "same.png"), "--overlay", str(tmp_path / "same.png")], "is also --out's file"),
    ):
        values = dict(zip(common[1::2], common[2::2]))
        values.update({"--text": SENTENCES[0], "--out": str(tmp_path / "x.png")}, **dict(zip(arguments[::2], arguments[1::2])))
        argv = ["predict", "--no-fast"] + [item for pair in values.items() for item in pair]
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.startswith("restr-fast predict: error: ") and message in error and error.count("\n") == 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "photo.png")), image)


@requires_gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gpu_fast_path_matches_the_reference_within_the_tolerance_rule(model, vocabulary, dtype, tmp_path):
    """Fast (kernels) and reference at ``dtype`` against the fp32 reference: the fast path's error is at most
    2x the reference's own error at that dtype, plus a small atol (DESIGN.md section 6)."""
    folder = Predictor(model, vocabulary).save(tmp_path / "model")
    truth = Predictor.from_checkpoint(folder, device="cuda", dtype="float32", fast=False)
    same_dtype = Predictor.from_checkpoint(folder, device="cuda", dtype=dtype, fast=False)
    fast = Predictor.from_checkpoint(folder, device="cuda", dtype=dtype, fast=True)
    assert fast.device.type == "cuda" and fast.config.fast
    images = [random_image(50, 80, seed=1), random_image(97, 33, seed=2), random_image(64, 64, seed=3)]
    texts = SENTENCES[:3]
    for want, reference_result, fast_result in zip(truth.predict(images, texts), same_dtype.predict(images, texts),
                                                   fast.predict(images, texts)):
        reference_error = (reference_result.probability - want.probability).abs().max()
        fast_error = (fast_result.probability - want.probability).abs().max()
        assert fast_error <= 2 * reference_error + 1e-5, (float(fast_error), float(reference_error))


@requires_gpu
def test_gpu_auto_picks_cuda_and_bf16(model, vocabulary, tmp_path):
    folder = Predictor(model, vocabulary).save(tmp_path / "model")
    predictor = Predictor.from_checkpoint(folder)
    assert predictor.device.type == "cuda" and predictor.dtype == torch.bfloat16 and predictor.config.fast
    prediction = predictor.predict(random_image(50, 80), SENTENCES[0])
    assert prediction.mask.shape == (50, 80) and prediction.mask.device.type == "cpu"


def test_cuda_graphs_need_a_gpu(model, vocabulary):
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        Predictor(model, vocabulary, cuda_graphs=True)


@requires_gpu
def test_gpu_cuda_graph_replays_equal_eager_calls(model, vocabulary, tmp_path):
    folder = Predictor(model, vocabulary).save(tmp_path / "model")
    eager = Predictor.from_checkpoint(folder, device="cuda", dtype="bfloat16")
    graphed = Predictor.from_checkpoint(folder, device="cuda", dtype="bfloat16", cuda_graphs=True)
    image, other = random_image(50, 80, seed=1), random_image(97, 33, seed=2)
    for _ in range(2):  # the first call captures, the second replays
        for args in ((image, SENTENCES[0]), (other, SENTENCES[1]), ([image, other, image], SENTENCES[:3])):
            expected, got = eager.predict(*args), graphed.predict(*args)
            for want, have in zip(expected if isinstance(expected, list) else [expected],
                                  got if isinstance(got, list) else [got]):
                torch.testing.assert_close(have.probability, want.probability, rtol=0, atol=1e-6)
                assert torch.equal(have.mask, want.mask)
    assert len(graphed._graphed._graphs) == 2  # one graph per batch shape: (1 image, 1 pair), (2 images, 3 pairs)


@pytest.mark.gpu(devices=2, reason="needs two CUDA GPUs (the model on the second)")
def test_gpu_predictor_on_the_second_gpu(model, vocabulary, tmp_path):
    """The kernels and CUDA graphs run on the model's GPU, not on the current device (cuda:0)."""
    folder = Predictor(model, vocabulary).save(tmp_path / "model")
    image = random_image(50, 80, seed=1)
    expected = Predictor.from_checkpoint(folder, device="cuda:0", dtype="bfloat16").predict(image, SENTENCES[0])
    for cuda_graphs in (False, True):
        second = Predictor.from_checkpoint(folder, device="cuda:1", dtype="bfloat16", cuda_graphs=cuda_graphs)
        for _ in range(2):  # with graphs: a capture, then a replay
            got = second.predict(image, SENTENCES[0])
            assert torch.cuda.current_device() == 0
            torch.testing.assert_close(got.probability, expected.probability, rtol=0, atol=1e-6)
