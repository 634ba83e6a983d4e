"""A trained ReSTR as a drop-in inference module: image + sentence -> mask at the image's own size.

    from restr_fast import Predictor
    predictor = Predictor.from_checkpoint("runs/refcoco/model")   # GPU + bf16 + kernels when there is a GPU
    result = predictor.predict("photo.jpg", "the man in the blue hat")
    result.mask            # (H, W) bool at the photo's size
    result.probability     # (H, W) float32 in [0, 1]

Each image is letterboxed to the model's square input (normalised with mean = std = 0.5), the
pixel logits are mapped back to the original size (padding cut away, bilinear resize), and the
mask is logits > 0: exactly what evaluation does.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .attention import resolve_backend
from .config import ReSTRConfig
from .cuda_graphs import CUDAGraphed
from .data.transforms import Letterbox, letterbox_image, load_image, to_rgb, unletterbox
from .deployable import load_model, save_model_folder
from .devices import resolve_device
from .models import ReSTR, build_model
from .text import PAD_INDEX, UNK_INDEX, Vocabulary
from .text.vocabulary import quoted

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class Prediction(NamedTuple):
    """The result of one (image, sentence) pair, at the image's original size."""

    mask: torch.Tensor  # (H, W) bool, on the CPU: the referred region (pixel logits > 0)
    probability: torch.Tensor  # (H, W) float32, on the CPU: sigmoid of the pixel logits


class Predictor:
    """Segments the region a sentence refers to, for images of any size.

    Args:
        model: a ReSTR model with its trained weights, on the device to run on; it is put in eval mode.
        vocabulary: the vocabulary the model was trained with.
        config: how to run the model; default ``model.config``. It may differ from the model's config in
            implementation settings only (``fast``, ``attention``): the weights then move into a model
            built from ``config``.
        dtype: ``auto`` (autocast in the weights' dtype where they are bf16 or fp16; with fp32
            weights bf16 autocast on a GPU, fp32 on the CPU), ``float32`` (autocast off, also inside a
            caller's autocast), ``bfloat16`` or ``float16`` (autocast; with bf16 or fp16 weights only
            their own dtype), or a torch dtype.
        max_batch: pairs per forward pass; longer lists run in several passes.
        cuda_graphs: on a GPU, replay each forward from a CUDA graph captured for its batch shape
            (the number of distinct images and of pairs): much lower latency for small batches, at
            the cost of one capture per shape (a second or so) and its memory; at most 8 shapes. A
            graph replays what its capture ran: the attention backend then in effect (an
            :func:`~restr_fast.attention_backend` block around the first call of a shape holds for
            all its calls) and the weights' memory (moving or casting the model afterwards needs a
            new predictor; ``load_state_dict`` copies into that memory and is seen).

    Thread safety: :meth:`predict` changes no state of the predictor or the model (inference and
    autocast modes are per thread; CUDA-graph replays are serialised by a lock), so one predictor
    may serve several threads at once.
    """

    def __init__(self, model: ReSTR, vocabulary: Vocabulary, config: ReSTRConfig | None = None, *,
                 dtype: str | torch.dtype = "auto", max_batch: int = 32, cuda_graphs: bool = False) -> None:
        if not isinstance(model, ReSTR):
            raise TypeError(f"model must be a restr_fast ReSTR, got {type(model).__name__}")
        if not isinstance(vocabulary, Vocabulary):
            raise TypeError(f"vocabulary must be a restr_fast.text.Vocabulary, got {type(vocabulary).__name__}")
        weights = _weight_dtype(model)
        config = model.config if config is None else config
        if config != model.config:
            model = _rebuilt(model, config)
        if config.in_chans != 3:
            raise ValueError(f"the model takes images of {config.in_chans} channels; the predictor feeds RGB "
                             f"images (in_chans=3)")
        if len(vocabulary) > config.vocab_size:
            raise ValueError(f"the vocabulary has {len(vocabulary)} words but the model only {config.vocab_size} "
                             f"embedding rows: is it the vocabulary the model was trained with?")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.vocabulary = vocabulary
        self.config = config
        self.device = next(model.parameters()).device
        self._weights = weights
        # a parameter of each part (vision, language, fusion, ...): what predict checks for a cast or a move,
        # at a few microseconds a call where walking all of model.parameters() takes about a millisecond
        firsts = (next(part.parameters(), None) for part in model.children())
        self._part_parameters = [parameter for parameter in firsts if parameter is not None]
        self.dtype = resolve_dtype(dtype, self.device, weights)
        if weights != torch.float32 and self.dtype != weights:  # autocast meets weights of another dtype
            ran = "without autocast" if self.dtype == torch.float32 else f"under autocast in {self.dtype}"
            raise ValueError(f"dtype {str(self.dtype).removeprefix('torch.')} runs {ran}, but the model's weights "
                             f"are {weights}: pass dtype='auto' (autocast in {weights}) or cast the model with "
                             f"model.float()")
        self.max_batch = max_batch
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {self.device}")
        self._graphed = CUDAGraphed(self._forward) if cuda_graphs else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        fast: bool = True, max_batch: int = 32, cuda_graphs: bool = False,
                        attention: str = "auto") -> "Predictor":
        """A predictor of a saved model.

        Args:
            path: a model folder (written by :meth:`save` or by training as ``RUN/model``), a training
                checkpoint file (``.pt``), or a run folder (its ``model/``, else ``checkpoints/best.pt``,
                else ``checkpoints/latest.pt``).
            device: ``auto`` (CUDA when there is a GPU, else the CPU), or a device.
            dtype: see :class:`Predictor`; weights saved in bf16 or fp16 and run in another dtype are
                widened to fp32 first.
            fast: run the fused Triton kernels (same weights, same results within rounding).
            max_batch, cuda_graphs: see :class:`Predictor`.
            attention: the attention backend, whichever the model was trained with: ``auto`` (the
                fastest on the device), ``xformers``, ``sdpa`` or ``math`` (the same function).
        """
        device = resolve_device(device)
        resolve_backend(attention, device)  # a backend that cannot run there is refused now, not at predict
        model, vocabulary = load_model(path, fast=fast, attention=attention)
        model = model.to(device)
        weights = _weight_dtype(model)
        if weights != torch.float32 and resolve_dtype(dtype, next(model.parameters()).device, weights) != weights:
            model.float()  # autocast in another dtype, or none, runs on fp32 weights
        return cls(model, vocabulary, dtype=dtype, max_batch=max_batch, cuda_graphs=cuda_graphs)

    def save(self, directory: str | Path) -> Path:
        """Write the model as a deployable folder (weights, config, vocabulary), atomically."""
        return save_model_folder(directory, self.model, self.vocabulary)

    def predict(self, image: ImageLike | Sequence[ImageLike],
                text: str | Sequence[str]) -> Prediction | list[Prediction]:
        """Masks of the regions ``text`` refers to in ``image``.

        Args:
            image: a path (turned upright by its EXIF orientation, as viewers show the photo), a
                PIL image (as it is; any mode: grayscale, RGBA, 16-bit and palette images are
                converted to RGB, 16-bit ones from 0..65535, 32-bit and float ones from 0..255), an (H, W, 3) uint8 array, or a (3, H, W) tensor (uint8, or float in
                [0, 1]); or a list of them.
            text: a sentence, or a list of sentences. Sentences longer than ``max_words`` (20) words keep
                their first words, with a warning; unknown words read as ``<unk>`` (a warning when
                all of a sentence's words are unknown).

        Returns:
            One :class:`Prediction` for an image and a sentence. With lists, a list of predictions, one
            per pair: two lists pair up element by element (same length); a single image or sentence
            goes with every element of the other list. Each distinct image (the same object, or the same
            path) is encoded once per pass, whatever the number of its sentences.
        """
        self._check_weights_unchanged()
        images = list(image) if isinstance(image, (list, tuple)) else None
        texts = list(text) if isinstance(text, (list, tuple)) else None
        if images is not None and texts is not None and len(images) != len(texts):
            raise ValueError(f"got {len(images)} images and {len(texts)} sentences: lists must pair up "
                             f"(or pass one image, or one sentence)")
        count = len(images) if images is not None else len(texts) if texts is not None else 1
        if count == 0:
            return []
        images = images if images is not None else [image] * count
        texts = texts if texts is not None else [text] * count
        rows = []  # a loop, not a comprehension (its own frame before Python 3.12): warnings name the caller
        for t in texts:
            rows.append(self.vocabulary.encode(t, self.config.max_words, stacklevel=2))
        tokens = torch.stack(rows)  # (count, L)
        unknown_only = ((tokens == UNK_INDEX) | (tokens == PAD_INDEX)).all(dim=1).tolist()  # (count,)
        for text_ in dict.fromkeys(t for t, unknown in zip(texts, unknown_only) if unknown):
            warnings.warn(f"no word of {quoted(text_)} is in the model's vocabulary: it reads as <unk> only, so the "
                          f"mask cannot follow the sentence", stacklevel=2)
        listed = isinstance(image, (list, tuple))  # errors name an image by its index in the caller's list
        if listed:  # image files that are not there, before any batch runs
            for index, item in enumerate(images):
                if isinstance(item, (str, os.PathLike)) and not Path(item).expanduser().exists():
                    raise FileNotFoundError(f"image {index} of the list not found: {item}")
        predictions = []
        for start in range(0, count, self.max_batch):
            stop = min(start + self.max_batch, count)
            predictions += self._predict_batch(images[start:stop], tokens[start:stop], start if listed else None)
        return predictions if isinstance(image, (list, tuple)) or isinstance(text, (list, tuple)) else predictions[0]

    def _check_weights_unchanged(self) -> None:
        """A RuntimeError if the model (or a part of it) was cast or moved after the predictor was built."""
        found = {(parameter.dtype, parameter.device) for parameter in self._part_parameters}
        if found != {(self._weights, self.device)}:
            now = ", ".join(sorted(f"{dtype} on {device}" for dtype, device in found))
            raise RuntimeError(f"the model's weights are now {now}, but this predictor was built for "
                               f"{self._weights} on {self.device}: build a new Predictor after casting or moving "
                               f"the model")

    def _predict_batch(self, images: list[ImageLike], tokens: torch.Tensor,
                       first_index: int | None) -> list[Prediction]:
        """One forward pass: images (B items), tokens (B, L) -> B predictions. ``first_index``: the index
        of images[0] in the caller's list, which errors name (None: the caller gave one image)."""
        keys = [_identity(image) for image in images]
        unique = list(dict.fromkeys(keys))  # distinct images, in order of first use
        inputs, boxes = zip(*(letterbox_image(_rgb_item(images, keys.index(key), first_index),
                                              self.config.image_size) for key in unique))
        order = [unique.index(key) for key in keys]  # image of each pair
        which = torch.tensor(order, device=self.device)  # (B,)
        forward = self._graphed or self._forward
        logits = forward(torch.stack(inputs).to(self.device), which, tokens.to(self.device))  # (B, 1, S, S)
        # not inference mode, even the caller's: the masks are the user's, to edit in place or use as targets
        with torch.inference_mode(False), torch.no_grad():
            return [_restore(logits[i, 0], boxes[order[i]]) for i in range(len(images))]

    def _forward(self, images: torch.Tensor, which: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """images (U, 3, S, S), which (B,) image of each pair, tokens (B, L) -> fp32 pixel logits (B, 1, S, S)."""
        with torch.inference_mode(), self._autocast():
            z_v = self.model.encode_images(images)  # (U, N, D)
            size = (self.config.image_size, self.config.image_size)
            return self.model.segment(z_v[which], tokens, size).pixel_logits.float()

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Autocast in the predictor's dtype; for float32, autocast off (whatever the caller's)."""
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)


def _restore(logits: torch.Tensor, box: Letterbox) -> Prediction:
    """Model-input logits (S, S) -> the prediction at the original (H, W)."""
    restored = unletterbox(logits, box)  # (H, W) float32
    return Prediction((restored > 0).cpu(), restored.sigmoid().cpu())


def _rgb_item(images: list[ImageLike], index: int, first_index: int | None) -> Image.Image:
    """:func:`to_rgb_image` of ``images[index]``; its errors name its place in the caller's list."""
    try:
        return to_rgb_image(images[index])
    except (FileNotFoundError, ValueError, TypeError) as error:
        if first_index is None or type(error) not in (FileNotFoundError, ValueError, TypeError):  # (one message)
            raise
        raise type(error)(f"image {first_index + index} of the list: {error}") from error


def _identity(image: ImageLike) -> tuple:
    """Key under which equal image inputs are encoded once: the path, or the object."""
    return ("path", os.fspath(image)) if isinstance(image, (str, os.PathLike)) else ("object", id(image))


def _weight_dtype(model: ReSTR) -> torch.dtype:
    """The one dtype of ``model``'s parameters, float32, bfloat16 or float16; a clear error otherwise."""
    weight_dtypes = {parameter.dtype for parameter in model.parameters()}
    if len(weight_dtypes) > 1 or not weight_dtypes <= set(DTYPES.values()):
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in weight_dtypes))
        raise ValueError(f"the model's weights are {names}: the predictor runs weights of one dtype, float32, "
                         f"bfloat16 or float16; cast the model with model.float()")
    return weight_dtypes.pop()


def _rebuilt(model: ReSTR, config: ReSTRConfig) -> ReSTR:
    """A model of ``config`` holding ``model``'s weights, when the two differ in implementation settings only."""
    if not isinstance(config, ReSTRConfig):
        raise TypeError(f"config must be a ReSTRConfig, got {type(config).__name__}")
    if config.replace(fast=model.config.fast, attention=model.config.attention) != model.config:
        changed = sorted(k for k, v in config.to_dict().items() if v != model.config.to_dict()[k])
        raise ValueError(f"config differs from the model's config in {changed}: only fast and attention may "
                         f"differ (pass the config the model was built with)")
    parameter = next(model.parameters())
    rebuilt = build_model(config).to(parameter.device, parameter.dtype)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def to_rgb_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, an (H, W[, C]) uint8 array or a (C, H, W) tensor
    (uint8, or float in [0, 1]), C = 1, 3 or 4. Files are turned upright by their EXIF orientation,
    as image viewers show them; a PIL image is taken as it is."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, upright=True)
    if isinstance(image, Image.Image):
        return to_rgb(_loaded(image))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise ValueError(f"an image tensor must have shape (3, H, W), got {tuple(image.shape)}")
        if image.is_floating_point():
            if not bool(((image >= 0) & (image <= 1)).all()):  # NaN fails both comparisons
                numbers = image[~image.isnan()]
                found = f"[{float(numbers.min()):.6g}, {float(numbers.max()):.6g}]" if numbers.numel() else "no numbers"
                raise ValueError(f"a float image tensor must hold values in [0, 1], got {found}"
                                 + (" and NaN" if numbers.numel() < image.numel() else ""))
            image = (image * 255).round().to(torch.uint8)
        elif image.dtype != torch.uint8:
            raise TypeError(f"an image tensor must be uint8 (0..255) or float in [0, 1], got {image.dtype}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor, "
                        f"got {type(image).__name__}")
    if image.dtype != np.uint8:
        hint = (": for values in [0, 1], pass (array * 255).round().astype(np.uint8), or a (3, H, W) float tensor"
                if np.issubdtype(image.dtype, np.floating) else "")
        raise TypeError(f"an image array must be uint8 (0..255), got {image.dtype}{hint}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        channels_first = image.ndim == 3 and image.shape[0] in (1, 3, 4)
        hint = ": channels come last in an array, use array.transpose(1, 2, 0)" if channels_first else ""
        raise ValueError(f"an image array must have shape (H, W, 3), got {image.shape}{hint}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has no pixels (size {image.shape[1]}x{image.shape[0]})")
    return to_rgb(Image.fromarray(np.ascontiguousarray(image)))


def _loaded(image: Image.Image) -> Image.Image:
    """``image`` with its pixels read; a ValueError where they cannot be (a file image closed before
    they were read, a truncated file)."""
    try:
        image.load()
    except (AssertionError, ValueError) as error:  # Pillow asserts on an image whose file was closed unread
        if isinstance(error, ValueError) and "closed" not in str(error):
            raise ValueError(f"cannot read the PIL image: {error}") from error
        raise ValueError("the PIL image is closed (at the end of its `with Image.open(...)` block, or by "
                         "image.close()): call image.load() or image.copy() inside the block, or pass the "
                         "path") from error
    except OSError as error:
        raise ValueError(f"cannot read the PIL image: {error}") from error
    return image


def overlay(image: ImageLike, mask: torch.Tensor | np.ndarray) -> Image.Image:
    """The image dimmed, with the masked region tinted red: for looking at a prediction."""
    pixels = np.asarray(to_rgb_image(image), dtype=np.float32)  # (H, W, 3)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != pixels.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} does not fit the image of shape {pixels.shape[:2]}")
    shown = pixels * 0.4
    shown[mask] = pixels[mask] * 0.5 + np.array([255.0, 0.0, 0.0]) * 0.5
    return Image.fromarray(shown.round().astype(np.uint8))


def resolve_dtype(dtype: str | torch.dtype, device: torch.device,
                  weights: torch.dtype = torch.float32) -> torch.dtype:
    """``auto``: the dtype of the model's ``weights`` where it is a low precision one, else bf16 on
    CUDA and fp32 elsewhere; names as in :data:`DTYPES`."""
    if dtype == "auto":
        if weights in (torch.bfloat16, torch.float16):
            return weights
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
