"""The cases of the kernel groups, named once for the benchmarks that run them and for the report,
which counts a case that left no row in the JSON (skipped, out of time) as not measured."""

SEED_MASK_N = (900, 3600)
SEED_MASK_PASSES = ("forward", "forward+backward")
DECODER_SIZES = {"480/16": (480, 16), "480/8": (480, 8), "640/16": (640, 16)}  # case -> (image size, patch)


def seed_mask_case(n: int, pass_: str) -> str:
    return f"{pass_}-N{n}"


SEED_MASK_CASES = tuple(seed_mask_case(n, pass_) for n in SEED_MASK_N for pass_ in SEED_MASK_PASSES)
DECODER_CASES = tuple(DECODER_SIZES)
