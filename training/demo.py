"""``restr-fast demo``: synthetic data, a restr-tiny training run, evaluation and figures, in minutes on a CPU."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..config import get_config
from ..data import ReferDataset, collate, load_image, unletterbox
from ..data.synthetic import generate
from ..metrics import format_table
from . import distributed
from .checkpoint import load_checkpoint, model_from_checkpoint, write_text_atomically
from .evaluate import evaluate
from .plots import loss_curve, prediction_grid
from .trainer import TrainConfig, load_run_config, train

DATASET = "synthetic"
NEUTRAL_WORD = "object"  # replaces every sentence in the language ablation (never in them, so read as <unk>)
OUTPUTS = ("data", "run", "metrics.md", "metrics.json", "loss.png", "predictions.png")  # what run_demo writes in out
RECIPE = Path(__file__).parent / "configs" / "synthetic.yaml"  # restr-tiny from scratch: 5.5 min of training on 2 CPU cores (README)


def run_demo(out: str | Path, steps: int | None = None, images: int = 3000, device: str = "auto",
             seed: int = 0) -> dict:
    """Write ``out/data`` (synthetic REFER data), ``out/run`` (the training run) and the results:
    ``out/metrics.md``, ``out/metrics.json``, ``out/loss.png``, ``out/predictions.png``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: choose a folder for --out")
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present:
        raise ValueError(f"{out} already holds {', '.join(present)}: choose another --out (nothing is overwritten)")
    torch.set_flush_denormal(True)
    data_root = out / "data"
    preset, model_overrides, recipe = load_run_config(RECIPE)
    recipe.update(data_root=str(data_root), device=device, seed=seed, **({"steps": steps} if steps is not None else {}))
    config = TrainConfig(**recipe)  # settings checked before anything is written
    print(f"1/4 writing {images} synthetic images to {data_root}")
    generate(data_root, images=images, seed=seed, name=DATASET)

    print(f"2/4 training {preset} (recipe: {RECIPE.name})")
    train(get_config(preset, **model_overrides), config, out / "run")

    print(f"3/4 evaluating the best checkpoint on the validation split, with the sentences and with each replaced "
          f"by {NEUTRAL_WORD!r} (a word they never use, read as <unk>: no hint of the region)")
    device_ = distributed.setup(device).device
    model, vocabulary = model_from_checkpoint(load_checkpoint(out / "run" / "checkpoints" / "best.pt"))
    model.to(device_)
    results = {}
    for name, sentence in (("sentences", None), (f"every sentence = {NEUTRAL_WORD!r}", NEUTRAL_WORD)):
        with warnings.catch_warnings():  # the neutral word is meant to be out of the vocabulary
            warnings.filterwarnings("ignore", message="no word of the replacement sentence")
            dataset = ReferDataset(data_root, DATASET, "unc", "val", vocabulary, model.config.image_size,
                                   originals=True, sentences=sentence)
        results[name] = evaluate(model, dataset, device_)
    tables = [format_table(result, f"{DATASET} val, {name}") for name, result in results.items()]
    write_text_atomically(out / "metrics.md", "\n\n".join(tables) + "\n")
    write_text_atomically(out / "metrics.json", json.dumps(results, indent=2))

    print("4/4 drawing the loss curve and predictions")
    records = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    loss_curve([r["step"] for r in logged], [r["loss"] for r in logged], out / "loss.png",
               title="restr-tiny on synthetic data: training loss (eq. 12)")
    _draw_predictions(model, data_root, vocabulary, device_, out / "predictions.png")

    print()
    print("\n\n".join(tables))
    with_words, without = results["sentences"]["overall_iou"], results[f"every sentence = {NEUTRAL_WORD!r}"]["overall_iou"]
    print(f"\noverall IoU {100 * with_words:.2f} % with the sentences, {100 * without:.2f} % with every sentence "
          f"replaced by {NEUTRAL_WORD!r}; results in {out}")
    return results


@torch.no_grad()
def _draw_predictions(model, data_root: Path, vocabulary, device: torch.device, path: Path, count: int = 8) -> None:
    dataset = ReferDataset(data_root, DATASET, "unc", "val", vocabulary, model.config.image_size, originals=True)
    items = [dataset[i] for i in range(0, len(dataset), max(1, len(dataset) // count))][:count]
    batch = collate(items)
    model.eval()
    logits = model(batch["image"].to(device), batch["tokens"].to(device)).pixel_logits.float().cpu()
    images, sentences, predictions, targets = [], [], [], []
    for i, item in enumerate(items):
        sample = dataset.samples[item["index"]]
        images.append(load_image(dataset.annotations.image_path(dataset.image_root, sample.image_id)))
        sentences.append(sample.sentence)
        predictions.append((unletterbox(logits[i, 0], item["box"]) > 0).numpy())
        targets.append(np.asarray(item["original_mask"]))
    prediction_grid(images, sentences, predictions, targets, path)
