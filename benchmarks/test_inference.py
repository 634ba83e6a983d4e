"""Inference at 480/16, bf16 autocast: batch-1 latency and batch-32 throughput of the whole model,
and one image with 8 sentences through :class:`restr_fast.Predictor` against 8 separate calls.

Model cases time ``model(images, tokens).pixel_logits > 0`` under ``torch.inference_mode`` for
``reference``, ``eager-sdpa``, ``fast`` (see :mod:`benchmarks.workloads`) and ``fast-graphs`` (the fast
model replayed from a CUDA graph, :class:`restr_fast.cuda_graphs.CUDAGraphed`); ``extra_info`` adds
images/s and TFLOP/s (2 x the reference's MACs per image). The Predictor cases include its whole
pipeline (letterboxing a 640x480 uint8 image, encoding the sentences, mapping the masks back, copying
them to the CPU); ``one-call`` runs ``predict(image, [8 sentences])``, which encodes the image once,
``separate-calls`` runs ``predict(image, sentence)`` 8 times; ``speedup_vs_separate-calls`` is their ratio.

Cost on one H200, from DESIGN.md section 2: batch 1 ~12 ms a call, ~45 calls a case, ~1 s with the
model's construction; batch 32 ~56 ms (reference ~2x), ~8 calls, ~1.5 s; Predictor cases ~1.5 s
each. About 12 s in all.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import restr_fast
from restr_fast.cuda_graphs import CUDAGraphed
from restr_fast.text import Vocabulary

from .conftest import out_of_memory_reason, peak_memory, release_memory, requires_gpu, skip_unless_time
from .workloads import forward_macs, model_for, random_batch

IMAGE_SIZE = 480
CASE_S = 10  # budget check per case
MODEL_CASES = [(batch, impl) for batch in (1, 32) for impl in ("reference", "eager-sdpa", "fast", "fast-graphs")]
SENTENCES = ["the man in the blue hat on the left", "a red car", "the dog behind the bench",
             "woman holding an umbrella", "second cup from the right", "the tallest tree",
             "bottom left corner of the table", "the child next to the bicycle"]
PREDICTOR_IMPLS = ("separate-calls", "one-call")  # the baseline first
_separate_calls_s: dict[str, float] = {}


@requires_gpu
@pytest.mark.benchmark(group="inference")
@pytest.mark.parametrize("batch, impl", MODEL_CASES, ids=[f"{impl}-b{batch}" for batch, impl in MODEL_CASES])
def test_inference(benchmark, measure, batch, impl):
    skip_unless_time(CASE_S)
    release_memory()
    model = model_for("fast" if impl == "fast-graphs" else impl, IMAGE_SIZE).eval()
    images, tokens, _ = random_batch(model.config, batch)

    def forward(images, tokens):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(images, tokens).pixel_logits > 0

    graphed = CUDAGraphed(forward) if impl == "fast-graphs" else None

    def predict():
        return (graphed or forward)(images, tokens)

    flop = 2 * forward_macs(IMAGE_SIZE) * batch
    failure = capture_peak = None
    try:
        if graphed is not None:  # a replay allocates nothing: the graph's memory is the capture's peak
            capture_peak = peak_memory(predict)
        median = measure(predict, impl=impl, case=f"{IMAGE_SIZE}-p16-b{batch}", flop=flop,
                         rounds=10 if batch == 1 else 5, round_s=0.05)
    except RuntimeError as error:
        failure = out_of_memory_reason(error)
        if failure is None:
            raise
    if failure is not None:  # outside the except block, so the error's frames (and tensors) are freed
        del model, images, tokens
        release_memory()
        pytest.skip(failure)
    benchmark.extra_info.update(images_per_s=batch / median, batch=batch)
    if capture_peak is not None:
        benchmark.extra_info["peak_memory_gb"] = max(capture_peak / 1e9, benchmark.extra_info["peak_memory_gb"])


@requires_gpu
@pytest.mark.benchmark(group="inference")
@pytest.mark.parametrize("impl", PREDICTOR_IMPLS)
def test_predictor_sentences(benchmark, measure, impl):
    if not hasattr(restr_fast, "Predictor"):
        pytest.skip("restr_fast.Predictor does not exist in this version of restr_fast")
    skip_unless_time(CASE_S)
    release_memory()
    predictor = restr_fast.Predictor(model_for("fast", IMAGE_SIZE), Vocabulary.from_sentences(SENTENCES))
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)  # (H, W, 3), COCO-like

    def one_call():
        return predictor.predict(image, SENTENCES)

    def separate_calls():
        return [predictor.predict(image, sentence) for sentence in SENTENCES]

    case = f"1 image x {len(SENTENCES)} sentences"
    median = measure(one_call if impl == "one-call" else separate_calls, impl=impl, case=case,
                     rounds=5, round_s=0.05)
    if impl == "separate-calls":
        _separate_calls_s[case] = median
    elif case in _separate_calls_s:
        benchmark.extra_info["speedup_vs_separate-calls"] = _separate_calls_s[case] / median
    benchmark.extra_info["sentences_per_s"] = len(SENTENCES) / median
