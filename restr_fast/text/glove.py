"""GloVe word vectors for a vocabulary, from the standard text format or an .npy matrix."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .vocabulary import PAD_INDEX, UNK_INDEX, Vocabulary

MISSING_RULES = ("random", "mean")


def load_glove(path: str | Path, vocabulary: Vocabulary, dim: int | None = None,
               missing: str = "random", seed: int = 0, words_path: str | Path | None = None) -> torch.Tensor:
    """The (len(vocabulary), dim) float32 embedding matrix of ``vocabulary`` from GloVe vectors.

    Args:
        path: GloVe text file (``word v1 ... vD`` per line, UTF-8), or an ``.npy`` matrix (V, D)
            whose row i is the vector of line i of ``words_path``.
        vocabulary: the words to fill. A word takes the vector of the same word, else of its
            lower-cased form.
        dim: expected vector size; inferred from the file when None.
        missing: rows of words without a vector (and of ``<go>``, ``<eos>``): ``random`` (normal,
            with the per-dimension std of the found vectors, seeded by ``seed``) or ``mean`` (the
            mean found vector). ``<unk>`` starts at the mean vector unless the file has one: a
            vocabulary of every training word never shows it in training, so it keeps its first
            value for the unseen words of evaluation.
        words_path: the word list of an ``.npy`` matrix, one word per line; default: the ``.npy``
            path with suffix ``.txt``.

    Row 0 (padding) is zero. Raises FileNotFoundError for missing files and ValueError for
    malformed ones or when no word of the vocabulary has a vector.
    """
    if missing not in MISSING_RULES:
        raise ValueError(f"missing must be one of {list(MISSING_RULES)}, got {missing!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GloVe file not found: {path}; pass a local GloVe text file "
                                f"(e.g. glove.840B.300d.txt) or an .npy matrix with its word list")

    def wanted(word: str) -> bool:
        return word in vocabulary or word.lower() in vocabulary

    entries = _read_npy(path, words_path, dim) if path.suffix == ".npy" else _read_text(path, dim, wanted)

    exact: dict[int, np.ndarray] = {}
    folded: dict[int, np.ndarray] = {}
    dim_found = dim
    for word, vector in entries:
        dim_found = len(vector)
        if word in vocabulary:
            exact.setdefault(vocabulary.index(word), vector)
        elif word.lower() in vocabulary:
            folded.setdefault(vocabulary.index(word.lower()), vector)
    found = {**folded, **exact}
    found.pop(PAD_INDEX, None)
    if not found:
        raise ValueError(f"none of the {len(vocabulary)} vocabulary words has a vector in {path}")

    vectors = np.stack(list(found.values())).astype(np.float32)  # (n_found, D)
    if missing == "random":
        generator = np.random.default_rng(seed)
        std = vectors.std(axis=0) if len(vectors) > 1 else np.ones(dim_found, np.float32)
        table = generator.standard_normal((len(vocabulary), dim_found)).astype(np.float32) * std
    else:
        table = np.tile(vectors.mean(axis=0), (len(vocabulary), 1))
    table[list(found)] = vectors
    if UNK_INDEX not in found:
        table[UNK_INDEX] = vectors.mean(axis=0)
    table[PAD_INDEX] = 0.0
    return torch.from_numpy(table)


def _read_text(path: Path, dim: int | None, wanted: Callable[[str], bool]) -> Iterator[tuple[str, np.ndarray]]:
    """(word, vector) per line of a ``wanted`` word (the others' numbers are never parsed: most of a
    GloVe file); words may contain spaces (the vector is the last ``dim`` fields). A UTF-8 byte-order
    mark and a word2vec header line (``count dim``) are skipped. With ``dim`` given, a first line of
    a word and more than ``dim`` numbers is an error at once (vectors of another size)."""
    first = True  # the first vector line
    with open(path, encoding="utf-8-sig", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").rstrip(" ").split(" ")
                if number == 1 and len(fields) == 2 and all(field.isdigit() for field in fields):
                    dim = _header_dim(path, int(fields[1]), dim)
                    continue
                if dim is None:
                    dim = len(fields) - 1
                    if dim < 1:
                        raise ValueError(f"{path}, line 1: expected 'word v1 ... vD', got {line[:80]!r}")
                elif first and len(fields) - 1 > dim and _is_vector_line(" ".join(fields), len(fields) - 1):
                    raise ValueError(f"{path}, line {number}: vectors of {len(fields) - 1} numbers, expected {dim} "
                                     f"(the word embedding's size, word_dim): pass GloVe vectors of that size")
                first = False
                if len(fields) < dim + 1:
                    raise ValueError(f"{path}, line {number}: expected a word and {dim} numbers (the word "
                                     f"embedding's size, word_dim), got {len(fields)} fields")
                word = " ".join(fields[:-dim])
                if not wanted(word):
                    continue
                try:
                    vector = np.asarray(fields[-dim:], dtype=np.float32)
                except ValueError as error:
                    raise ValueError(f"{path}, line {number}: {error}") from error
                if not np.isfinite(vector).all():
                    raise ValueError(f"{path}, line {number}: the vector of {word!r} is not finite (nan or inf): "
                                     f"a corrupt file?")
                yield word, vector
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not a UTF-8 GloVe text file: {error}") from error


def _header_dim(path: Path, header_dim: int, dim: int | None) -> int:
    """The vector size a word2vec header line states, checked against ``dim``."""
    if dim is not None and header_dim != dim:
        raise ValueError(f"{path}: its header line says vectors of size {header_dim}, expected {dim}")
    return header_dim


def _is_vector_line(line: str, dim: int) -> bool:
    """Whether ``line`` ends in ``dim`` numbers after a word, as a GloVe text file's lines do."""
    fields = line.rsplit(" ", dim)
    try:
        return len(fields) == dim + 1 and all(np.isfinite(float(value)) for value in fields[1:])
    except ValueError:
        return False


def _read_npy(path: Path, words_path: str | Path | None, dim: int | None) -> Iterator[tuple[str, np.ndarray]]:
    words_path = Path(words_path) if words_path is not None else path.with_suffix(".txt")
    if not words_path.is_file():
        raise FileNotFoundError(f"word list of {path} not found: {words_path}; pass words_path "
                                f"(one word per line, in the matrix's row order)")
    try:
        matrix = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"could not read the GloVe matrix {path}: {error}") from error
    words = words_path.read_text(encoding="utf-8-sig").rstrip("\n").split("\n")
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise ValueError(f"GloVe matrix {path} has shape {matrix.shape}, expected ({len(words)}, D) "
                         f"for the {len(words)} words of {words_path}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"GloVe matrix {path} has vectors of size {matrix.shape[1]}, expected {dim}")
    if _is_vector_line(words[0], matrix.shape[1]):
        raise ValueError(f"{words_path}, the word list of {path}, holds a word and {matrix.shape[1]} numbers a line: "
                         f"it is a GloVe text file, not a word list; load it as the path itself, or pass words_path "
                         f"(one word per line, in the matrix's row order)")
    if not np.isfinite(matrix).all():
        raise ValueError(f"GloVe matrix {path} holds values that are not finite (nan or inf): a corrupt file?")
    return zip(words, matrix.astype(np.float32, copy=False))
