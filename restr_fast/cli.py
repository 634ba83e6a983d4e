"""The ``restr-fast`` command line: forward, synth, train, evaluate, predict, demo, doctor."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from .compute import PARTS, count_macs, count_parameters
from .config import ATTENTION_BACKENDS, PRESETS, ReSTRConfig, get_config
from .devices import resolve_device
from .models import build_model
from .text import Vocabulary
from .text.vocabulary import quoted


def _forward(args: argparse.Namespace) -> None:
    """Run one forward pass of a randomly initialised model on a random image and a sentence."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    config = get_config(args.config, **overrides)
    vocabulary = Vocabulary.from_sentences([args.text])
    model = build_model(config, vocab_size=max(len(vocabulary), config.vocab_size)).to(device).eval()
    size = config.image_size
    images = torch.rand(args.batch_size, config.in_chans, size, size, device=device) * 2 - 1
    tokens = vocabulary.encode(args.text, config.max_words).expand(args.batch_size, -1).to(device)

    with torch.no_grad():
        start = time.perf_counter()
        output = model(images, tokens)
        if images.is_cuda:  # the GPU's work, not only its launches
            torch.cuda.synchronize(images.device)
        seconds = time.perf_counter() - start
    macs = count_macs(model, size, by_part=True)

    print(f"{args.config}: {count_parameters(model) / 1e6:.2f}M parameters, {size}x{size} input, "
          f"patch {config.patch_size}, fusion {config.fusion} (depth {config.fusion_depth}), "
          f"attention {config.attention}")
    print(f"{'part':<16}{'params (M)':>12}{'GMACs/image':>14}")
    for part in PARTS:
        module = getattr(model, part)
        if module is not None:
            print(f"{part:<16}{count_parameters(module) / 1e6:>12.3f}{macs[part] / 1e9:>14.3f}")
    print(f"{'total':<16}{count_parameters(model) / 1e6:>12.3f}{macs['total'] / 1e9:>14.3f}")
    print(f"sentence: {args.text!r} -> {vocabulary.decode(tokens[0].tolist())}")
    print(f"pixel_logits {tuple(output.pixel_logits.shape)}, patch_logits {tuple(output.patch_logits.shape)}; "
          f"forward of batch {args.batch_size} on {device}: {seconds * 1e3:.1f} ms (a first call: "
          f"one-time setup included; the benchmarks/ suite times warm calls)")


def _synth(args: argparse.Namespace) -> None:
    from .data.refer import default_image_root
    from .data.synthetic import generate
    counts = generate(args.out, images=args.images, seed=args.seed, name=args.name)
    for split, count in counts.items():
        print(f"{split:<6} {count['images']:>6} images {count['refs']:>6} refs {count['sentences']:>6} sentences")
    print(f"wrote {Path(args.out) / args.name} and {default_image_root(Path(args.out), args.name)}")


TRAIN_FLAGS = {  # command-line flag -> TrainConfig field
    "data_root": "data_root", "dataset": "dataset", "split_by": "split_by", "train_split": "train_split",
    "val_split": "val_split", "image_root": "image_root",
    "steps": "steps", "batch_size": "batch_size", "lr": "lr", "device": "device", "amp": "amp",
    "accumulate": "accumulate", "grad_checkpointing": "grad_checkpointing", "glove": "glove",
    "vit_weights": "vit_weights", "workers": "workers", "seed": "seed", "eval_every": "eval_every",
    "vocabulary": "vocabulary", "checkpoint_every": "checkpoint_every", "log_every": "log_every",
    "stop_after": "stop_after", "init_from": "init_from",
}


# what a resumed run keeps from its config.yaml: the model, its data and its sample order (given again, the
# same values are accepted; the first two are the model's, the rest TrainConfig fields)
RESUME_FIXED = ("config", "img_size", "dataset", "split_by", "train_split", "val_split", "vocabulary", "glove",
                "vit_weights", "init_from", "seed")
PATH_SETTINGS = ("vocabulary", "glove", "vit_weights", "init_from")  # of those, the files


def _train(args: argparse.Namespace) -> None:
    import yaml

    from .training import TrainConfig, TrainingDiverged, train

    out = Path(args.out)
    if args.resume:  # the run's own settings; flags given now override those a resumed run can change
        if not (out / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume: {out / 'config.yaml'} not found; is {out} a run folder?")
        try:
            saved = yaml.safe_load((out / "config.yaml").read_text())
            model_config, train_values = ReSTRConfig.from_dict(saved["model"]), dict(saved["train"])
        except (yaml.YAMLError, KeyError, TypeError) as error:
            raise ValueError(f"--resume: {out / 'config.yaml'} is not a run config written by restr-fast train: "
                             f"{error!r}") from error
        train_values.pop("stop_after", None)  # an earlier invocation's limit (run folders of older versions)
        changed = _changed_on_resume(args, model_config, train_values)
        if changed:
            raise ValueError(f"--resume continues the run as it was configured: {', '.join(changed)} "
                             f"{'differs' if len(changed) == 1 else 'differ'} from {out / 'config.yaml'} and "
                             f"cannot change it: continue it with '--out {out} --resume' alone (or with training "
                             f"flags such as --steps), or start a new run in another --out")
        try:
            TrainConfig(**train_values)  # the file's own settings, before the flags given now change them
        except (ValueError, TypeError) as error:
            raise ValueError(f"{out / 'config.yaml'}: {error}") from error
    else:
        if args.config is None and args.init_from:  # the architecture of the model it starts from, on any backend
            from .deployable import saved_model_config
            try:
                preset, model_overrides, train_values = saved_model_config(args.init_from), {"attention": "auto"}, {}
            except (FileNotFoundError, ValueError) as error:
                raise type(error)(f"--init-from: {error}") from error
        else:
            preset, model_overrides, train_values = _resolve_config(args.config or "restr-b16")
        if args.init_from and args.vit_weights is None and train_values.pop("vit_weights", None):
            warnings.warn("--init-from: the vision encoder starts from the trained model, not from the config's "
                          "vit_weights", stacklevel=2)
        if args.img_size is not None:
            model_overrides["image_size"] = args.img_size
        model_config = get_config(preset, **model_overrides)
    for flag, field in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            train_values[field] = value
    if not train_values.get("data_root"):
        raise ValueError("--data-root is required (the folder with <dataset>/refs(<split_by>).p)")
    config = TrainConfig(**train_values)
    try:
        metrics = train(model_config, config, out, resume=args.resume)
    except TrainingDiverged as error:
        raise ValueError(str(error)) from error
    if metrics:
        print(f"{config.val_split} overall IoU {100 * metrics['overall_iou']:.2f} %; run folder {out}")
    elif metrics is None:
        print(f"the run in {out} is complete ({config.steps} steps): nothing to resume")
    else:
        print(f"stopped before the end; continue with --resume; run folder {out}")


def _changed_on_resume(args: argparse.Namespace, model_config: ReSTRConfig, train_values: dict) -> list[str]:
    """The flags of RESUME_FIXED given with other values than the run's (the same command with --resume
    added, as a job requeued after an interruption runs it, repeats them)."""
    given = {name: getattr(args, name) for name in RESUME_FIXED if getattr(args, name) is not None}
    changed = []
    if "config" in given:
        preset, overrides, config_train = _resolve_config(given["config"])
        if "img_size" in given:  # the flag's to compare, not the file's
            overrides["image_size"] = model_config.image_size
        described = get_config(preset, **overrides).replace(vocab_size=model_config.vocab_size)
        left_out = ("vit_weights",) if train_values.get("init_from") else ()  # as the run's start left it out
        if described != model_config or any(_differs(name, config_train[name], train_values.get(name))
                                             for name in RESUME_FIXED if name in config_train
                                             and name not in given and name not in left_out):
            changed.append("--config")
    if "img_size" in given and given["img_size"] != model_config.image_size:
        changed.append("--img-size")
    changed += [f"--{name.replace('_', '-')}" for name in RESUME_FIXED[2:]
                if name in given and _differs(name, given[name], train_values.get(name))]
    return changed


def _differs(name: str, given: Any, saved: Any) -> bool:
    """Whether the setting ``name`` given now differs from the run's: "" as unset (as TrainConfig takes it),
    paths as the files they name from here."""
    given, saved = (None if value == "" else value for value in (given, saved))
    if name in PATH_SETTINGS and given is not None and saved is not None:
        return Path(given).resolve() != Path(saved).resolve()
    return given != saved


def _resolve_config(name: str):
    """A preset name, a YAML path, or the name of a YAML under training/configs/."""
    from . import training
    if name in PRESETS:
        return name, {}, {}
    for candidate in (Path(name), Path(training.__file__).parent / "configs" / f"{name}.yaml"):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return training.load_run_config(candidate)
    configs = sorted(path.stem for path in (Path(training.__file__).parent / "configs").glob("*.yaml"))
    raise ValueError(f"--config {name!r} is neither a preset ({', '.join(sorted(PRESETS))}), a run config "
                     f"({', '.join(configs)}), nor a YAML file")


def _evaluate(args: argparse.Namespace) -> None:
    from .data import ReferDataset
    from .metrics import format_table
    from .deployable import WEIGHTS, load_model, saved_model
    from .training import evaluate
    from .training.distributed import setup, teardown

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    saved_model(args.checkpoint)  # a checkpoint that is not there is named first
    run = _run_data_settings(args.checkpoint) if None in (args.data_root, args.dataset, args.split_by) else {}
    args.data_root, args.dataset = args.data_root or run.get("data_root"), args.dataset or run.get("dataset")
    same_dataset = (args.data_root, args.dataset) == (run.get("data_root"), run.get("dataset"))
    args.split_by = args.split_by or (run.get("split_by") if args.dataset == run.get("dataset") else None) or "unc"
    if args.image_root is None and same_dataset:  # (the run's images, where its dataset is the one evaluated)
        args.image_root = run.get("image_root")
    if args.data_root is None or args.dataset is None:
        raise ValueError(f"--data-root and --dataset are required: {args.checkpoint} does not record a run's data "
                         f"(a run folder or a .pt checkpoint does)")
    if args.json:
        _check_output(args.json, "--json", (".json",))
        if (Path(args.json).resolve().parent / WEIGHTS).is_file():
            raise ValueError(f"--json {args.json} is in a model folder (beside {WEIGHTS}), which holds the "
                             f"model's files only: write the metrics elsewhere")
    processes = setup(args.device)  # under torchrun: one shard of the split per process
    try:
        device = processes.device
        model, vocabulary = load_model(args.checkpoint, attention=args.attention)
        model.to(device, torch.float32)  # --amp sets the precision; weights saved in bf16 or fp16 widen exactly
        dataset = ReferDataset(args.data_root, args.dataset, args.split_by, args.split, vocabulary,
                               model.config.image_size, image_root=args.image_root,
                               max_words=model.config.max_words, originals=True, sentences=args.sentence)
        amp = args.amp if args.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
        result = evaluate(model, dataset, device, batch_size=args.batch_size, amp=amp, workers=args.workers,
                          limit=args.limit)  # reduced over the processes
        if not processes.is_main:
            return
        title = f"{args.dataset} ({args.split_by}) {args.split}" + (f", every sentence = {args.sentence!r}"
                                                                   if args.sentence else "")
        print(format_table(result, title))
        if dataset.wordless:
            print(f"{dataset.wordless} sentences of the split have no words and were left out")
        result["wordless_left_out"] = dataset.wordless
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
            print(f"wrote {args.json}")
    finally:
        teardown()


def _run_data_settings(checkpoint: str) -> dict:
    """The training settings (data_root, dataset, ...) of the run that wrote ``checkpoint``: a run folder's
    config.yaml or a .pt checkpoint's; {} for a model folder or anything else."""
    import yaml

    from .training import load_checkpoint

    path = Path(checkpoint)
    if path.is_dir() and (path / "config.yaml").is_file():
        try:
            return dict(yaml.safe_load((path / "config.yaml").read_text())["train"])
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path / 'config.yaml'} is not a run config written by restr-fast train: "
                             f"{error!r}; pass --data-root and --dataset") from error
    if path.is_file() and path.suffix == ".pt":
        return dict(load_checkpoint(path, mmap=True).get("train") or {})  # (it names a file it cannot read)
    return {}


def _file_identity(path: Path) -> tuple | Path:
    """What names one file: its device and inode where it exists (so that hard links match), else its
    resolved path."""
    try:
        status = path.stat()
    except OSError:
        return path.resolve()
    return status.st_dev, status.st_ino


def _predict(args: argparse.Namespace) -> None:
    from PIL import Image

    from .predictor import Predictor, overlay, to_rgb_image
    from .text import tokenize

    for text in args.text:  # the sentences, the outputs and the image, checked before the model loads
        if not tokenize(text):
            raise ValueError(f"--text {quoted(text)} has no words: give a sentence describing the object")
    outputs = {_file_identity(Path(args.image)): "--image"}
    for number in range(1, len(args.text) + 1):
        for flag, template, suffixes in (("--out", args.out, MASK_SUFFIXES), ("--overlay", args.overlay, IMAGE_SUFFIXES)):
            if template is None:
                continue
            path = _numbered(template, number, len(args.text))
            _check_output(path, flag, suffixes)
            identity = _file_identity(path)
            if identity in outputs:
                raise ValueError(f"{flag} {path} is also {outputs[identity]}'s file: give each output a name of its "
                                 f"own (the image is never overwritten)")
            outputs[identity] = flag
    image = to_rgb_image(args.image)  # read once
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype, fast=not args.no_fast,
                                          attention=args.attention)
    predictions = predictor.predict(image, list(args.text))
    for number, (text, prediction) in enumerate(zip(args.text, predictions), start=1):
        mask = prediction.mask.numpy()
        out = _numbered(args.out, number, len(args.text))
        Image.fromarray(mask.astype("uint8") * 255).save(out)
        written = [str(out)]
        if args.overlay:
            overlay_path = _numbered(args.overlay, number, len(args.text))
            overlay(image, mask).save(overlay_path)
            written.append(str(overlay_path))
        print(f"{text!r}: {100 * mask.mean():.1f} % of the {image.width}x{image.height} image -> {', '.join(written)}")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless: a mask stays black and white


def _check_output(path: str | Path, flag: str, suffixes: tuple[str, ...] | None = None) -> None:
    """A ValueError unless ``path`` is a file to write (with one of ``suffixes``) in an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: give a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: expected a file name ending in {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {path.parent} does not exist; create it first")


def _numbered(path: str, number: int, count: int) -> Path:
    """``path`` itself for a single sentence, else ``stem_<number>.suffix``."""
    path = Path(path)
    return path if count == 1 else path.with_name(f"{path.stem}_{number}{path.suffix}")


def _demo(args: argparse.Namespace) -> None:
    from .training.demo import run_demo
    resolve_device(args.device)  # before anything is written
    run_demo(args.out, steps=args.steps, images=args.images, device=args.device, seed=args.seed)


def _doctor(args: argparse.Namespace) -> None:
    from .diagnostics import doctor
    print(doctor(args.device))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restr-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    forward = commands.add_parser("forward", help="forward pass of a random model on a random image")
    forward.add_argument("--config", default="restr-tiny", choices=sorted(PRESETS), help="model preset")
    forward.add_argument("--text", default="the red circle left of the blue square", help="the referring sentence")
    forward.add_argument("--image-size", "--img-size", dest="image_size", type=int, default=None,
                         help="input side (default: the preset's)")
    forward.add_argument("--batch-size", type=int, default=1)
    forward.add_argument("--device", default="cpu")
    forward.add_argument("--seed", type=int, default=0)
    forward.set_defaults(run=_forward)

    synth = commands.add_parser("synth", help="write a synthetic referring-segmentation dataset (REFER layout)")
    synth.add_argument("--out", required=True, help="DATA_ROOT to write into")
    synth.add_argument("--images", type=int, default=2000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--name", default="synthetic", help="dataset name (folder under DATA_ROOT)")
    synth.set_defaults(run=_synth)

    train = commands.add_parser("train", help="train a model (the paper's recipe by default)")
    train.add_argument("--config", help="a preset, a YAML file, or the name of one under training/configs/ "
                                        "(e.g. refcoco); default: restr-b16, or with --init-from the trained model's")
    train.add_argument("--out", required=True, help="run folder (config, vocabulary, log, checkpoints)")
    train.add_argument("--data-root", dest="data_root")
    train.add_argument("--dataset")
    train.add_argument("--split-by", dest="split_by")
    train.add_argument("--train-split", dest="train_split",
                       help="the split trained on (default: train); several joined by '+', e.g. train+val")
    train.add_argument("--val-split", dest="val_split",
                       help="the split evaluated during training, by which best.pt is chosen (default: val)")
    train.add_argument("--image-root", dest="image_root")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", dest="batch_size", type=int, help="per process")
    train.add_argument("--img-size", dest="img_size", type=int, help="model input side")
    train.add_argument("--lr", type=float)
    train.add_argument("--device", help="auto (default), cpu, cuda")
    train.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"),
                       help="mixed precision (default: auto, bf16 on a GPU, off on the CPU)")
    train.add_argument("--accumulate", type=int, help="gradient accumulation steps")
    train.add_argument("--grad-checkpointing", dest="grad_checkpointing", action=argparse.BooleanOptionalAction,
                       help="recompute activations in the backward pass (less memory); --no-grad-checkpointing "
                            "turns off what the config or the resumed run set")
    train.add_argument("--glove", help="GloVe file for the word embeddings")
    train.add_argument("--vit-weights", dest="vit_weights", help="timm ViT checkpoint for the vision encoder")
    train.add_argument("--init-from", dest="init_from",
                       help="start from a trained model (a model folder, a .pt checkpoint or a run folder: its best model) "
                            "to fine-tune it: same architecture, any image size (a multiple of the patch), any "
                            "vocabulary")
    train.add_argument("--vocabulary", help="vocabulary file (default: built from the training sentences)")
    train.add_argument("--workers", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--eval-every", dest="eval_every", type=int)
    train.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    train.add_argument("--log-every", dest="log_every", type=int)
    train.add_argument("--stop-after", dest="stop_after", type=int,
                       help="end this invocation after N steps (continue later with --resume)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a split")
    evaluate.add_argument("--checkpoint", required=True, help="a model folder, a run folder or a .pt checkpoint")
    evaluate.add_argument("--data-root", help="default: the run's, for a run folder or a .pt checkpoint")
    evaluate.add_argument("--dataset", help="default: the run's, for a run folder or a .pt checkpoint")
    evaluate.add_argument("--split-by", help="default: the run's, for a run folder or a .pt checkpoint; else unc")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--image-root")
    evaluate.add_argument("--json", help="write the metrics to this JSON file")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--workers", type=int, default=0)
    evaluate.add_argument("--limit", type=int, help="evaluate a fixed random subset of N samples (the same every run)")
    evaluate.add_argument("--sentence", help="replace every sentence by this text (e.g. one neutral word)")
    evaluate.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS,
                          help="attention backend (default: auto, the fastest here; all compute the same function)")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="mask of the region a sentence refers to in an image")
    predict.add_argument("--checkpoint", required=True,
                         help="a model folder (Predictor.save, or RUN/model), a run folder or a .pt checkpoint")
    predict.add_argument("--image", required=True, help="image file (any size; grayscale, RGBA, 16-bit, palette)")
    predict.add_argument("--text", required=True, action="append",
                         help="the referring sentence; repeat for several sentences on the same image")
    predict.add_argument("--out", required=True,
                         help="mask PNG at the image's size (white = the region); with several --text, one file "
                              "per sentence numbered in --text order: mask.png -> mask_1.png, mask_2.png, ...")
    predict.add_argument("--overlay", help="also write the image with the region tinted red (numbered like --out)")
    predict.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    predict.add_argument("--dtype", default="auto",
                         help="auto (autocast in the weights' dtype where the model was saved in bf16 or fp16; with fp32 "
                              "weights bf16 autocast on a GPU, fp32 on the CPU), float32, bfloat16, float16 (bf16 or fp16 "
                              "weights run in another dtype are widened to fp32 first)")
    predict.add_argument("--no-fast", action="store_true", help="run the reference model instead of the Triton kernels")
    predict.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS,
                         help="attention backend (default: auto, the fastest here; all compute the same function)")
    predict.set_defaults(run=_predict)

    demo = commands.add_parser("demo", help="synthetic data -> train restr-tiny -> evaluate -> figures")
    demo.add_argument("--out", default="restr-demo", help="folder for its dataset, run, metrics and figures "
                                                           "(default: restr-demo)")
    demo.add_argument("--steps", type=int, default=None,
                      help="training steps (default: 2,600, five to ten minutes on 2 CPU cores with the rest)")
    demo.add_argument("--images", type=int, default=3000)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    doctor = commands.add_parser("doctor", help="versions, GPU and the attention backends this machine can run")
    doctor.add_argument("--device", default=None, help="device to probe the backends on (default: cuda if present, else cpu)")
    doctor.set_defaults(run=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # one line, as errors
        print(f"restr-fast {args.command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.run(args)
        except (ValueError, TypeError, OSError) as error:  # OSError: paths that are not what they must be
            print(f"restr-fast {args.command}: error: {error_message(error)}", file=sys.stderr)
            return 2
    return 0


def error_message(error: BaseException) -> str:
    """The message of ``error``; for one raised in a DataLoader worker, which torch raises again with
    the worker's traceback in its message, the original message (the traceback's last line)."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]  # "ValueError: <the original message>"
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def console_main() -> int:
    """The ``restr-fast`` command: :func:`main`, with Ctrl-C a one-line message instead of a traceback."""
    try:
        return main()
    except KeyboardInterrupt:
        training = sys.argv[1:2] == ["train"]
        print("restr-fast: interrupted" + ("; the same command with --resume continues the run from its latest "
                                          "checkpoint" if training else ""), file=sys.stderr)
        return 130  # as a shell reports a process ended by SIGINT


if __name__ == "__main__":
    sys.exit(console_main())
