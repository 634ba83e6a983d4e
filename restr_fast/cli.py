"""The ``restr-fast`` command line."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import torch

from .compute import PARTS, count_macs, count_parameters
from .config import PRESETS, get_config
from .models import build_model
from .text import Vocabulary


def _forward(args: argparse.Namespace) -> None:
    """Run one forward pass of a randomly initialised model on a random image and a sentence."""
    torch.manual_seed(args.seed)
    overrides = {} if args.image_size is None else {"image_size": args.image_size}
    config = get_config(args.config, **overrides)
    vocabulary = Vocabulary.from_sentences([args.text])
    model = build_model(config, vocab_size=max(len(vocabulary), config.vocab_size)).to(args.device).eval()
    size = config.image_size
    images = torch.rand(args.batch_size, config.in_chans, size, size, device=args.device) * 2 - 1
    tokens = vocabulary.encode(args.text, config.max_words).expand(args.batch_size, -1).to(args.device)

    with torch.no_grad():
        start = time.perf_counter()
        output = model(images, tokens)
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
          f"forward of batch {args.batch_size} on {args.device}: {seconds * 1e3:.1f} ms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restr-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    forward = commands.add_parser("forward", help="forward pass of a random model on a random image")
    forward.add_argument("--config", default="restr-tiny", choices=sorted(PRESETS), help="model preset")
    forward.add_argument("--text", default="the red circle left of the blue square",
                         help="the referring sentence")
    forward.add_argument("--image-size", type=int, default=None, help="input side (default: the preset's)")
    forward.add_argument("--batch-size", type=int, default=1)
    forward.add_argument("--device", default="cpu")
    forward.add_argument("--seed", type=int, default=0)
    forward.set_defaults(run=_forward)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"restr-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
