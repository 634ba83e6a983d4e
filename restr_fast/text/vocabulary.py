"""Word <-> id mapping, built from training sentences, saved as one word per line."""
from __future__ import annotations

import numbers
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .tokenizer import tokenize

SPECIAL_TOKENS = ("<pad>", "<go>", "<eos>", "<unk>")
PAD_INDEX, GO_INDEX, EOS_INDEX, UNK_INDEX = range(len(SPECIAL_TOKENS))
MAX_WORDS = 20


def quoted(text: str, limit: int = 80) -> str:
    """``repr(text)`` for messages, cut to its first ``limit`` characters (and its length) when longer."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


class Vocabulary:
    """Words in id order: ``<pad>, <go>, <eos>, <unk>``, then the words.

    Args:
        words: the words after the special tokens, without duplicates, empty strings or whitespace
            (:func:`tokenize` splits on it, and the saved file holds one word per line).
    """

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        problems = [w for w in words if not isinstance(w, str) or not w or w in SPECIAL_TOKENS
                    or any(c.isspace() for c in w)]
        if problems:
            raise ValueError(f"vocabulary words must be non-empty strings without whitespace, other than "
                             f"the special tokens {SPECIAL_TOKENS}, got {problems[:5]}")
        duplicates = sorted(w for w, n in Counter(words).items() if n > 1)
        if duplicates:
            raise ValueError(f"vocabulary has duplicate words: {duplicates[:5]}")
        self.words = list(SPECIAL_TOKENS) + words
        self._index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def from_sentences(cls, sentences: Iterable[str], min_count: int = 1,
                       max_size: int | None = None) -> "Vocabulary":
        """Words of ``sentences`` seen at least ``min_count`` times, most frequent first (ties
        alphabetically), at most ``max_size`` ids in all (special tokens included)."""
        counts = Counter(word for sentence in sentences for word in tokenize(sentence))
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(max_size - len(SPECIAL_TOKENS), 0)]
        return cls(words)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read a vocabulary file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8-sig").split("\n")  # a byte-order mark (Notepad's) skipped
        except UnicodeDecodeError as error:
            raise ValueError(f"vocabulary file {path} is not UTF-8 text: {error}") from error
        if lines and lines[-1] == "":
            lines.pop()
        if tuple(lines[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary file {path} must start with the lines {SPECIAL_TOKENS}, "
                             f"got {lines[:len(SPECIAL_TOKENS)]}")
        try:
            vocabulary = cls(lines[len(SPECIAL_TOKENS):])
        except ValueError as error:
            raise ValueError(f"vocabulary file {path}: {error}") from error
        unreachable = [word for word in vocabulary.words[len(SPECIAL_TOKENS):] if tokenize(word) != [word]]
        if unreachable:
            warnings.warn(f"{len(unreachable)} words of {path} are not words the tokenizer gives (e.g. "
                          f"{unreachable[:3]}: it lower-cases, composes accents and splits on punctuation), so no "
                          f"sentence reaches them: was the file written by another tokenizer?", stacklevel=2)
        return vocabulary

    def save(self, path: str | Path) -> None:
        """Write one word per line, in id order (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(self.words) + "\n", encoding="utf-8")
        tmp.replace(path)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def index(self, word: str) -> int:
        """The id of ``word``, ``<unk>``'s for unknown words."""
        return self._index.get(word, UNK_INDEX)

    def encode(self, text: str, max_words: int = MAX_WORDS, warn: bool = True, stacklevel: int = 1) -> torch.Tensor:
        """Token ids of a sentence: (max_words,) int64, left-padded with 0.

        Sentences longer than ``max_words`` keep their first ``max_words`` words (with a warning
        unless ``warn`` is False, attributed to the caller, or for a wrapper passing ``stacklevel``
        to its caller's caller and so on); a sentence without any word is an error.
        """
        if isinstance(max_words, bool) or not isinstance(max_words, numbers.Integral) or max_words < 1:
            raise ValueError(f"max_words must be a positive integer, got {max_words!r}")
        words = tokenize(text)
        if not words:
            raise ValueError(f"text {quoted(text)} has no words: give a sentence describing the object")
        if len(words) > max_words and warn:
            warnings.warn(f"sentence of {len(words)} words truncated to its first {max_words}: {quoted(text)}",
                          stacklevel=1 + stacklevel)
        words = words[:max_words]
        ids = [PAD_INDEX] * (max_words - len(words)) + [self.index(w) for w in words]
        return torch.tensor(ids, dtype=torch.long)

    def encode_batch(self, texts: Sequence[str], max_words: int = MAX_WORDS) -> torch.Tensor:
        """(len(texts), max_words) int64 ids."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of sentences; use encode for one")
        rows = [self.encode(t, max_words) for t in texts]
        return torch.stack(rows) if rows else torch.empty(0, max_words, dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of non-padding ids."""
        return [self.words[int(i)] for i in ids if int(i) != PAD_INDEX]
