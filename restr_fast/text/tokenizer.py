"""Sentence -> words, as in the released ReSTR code."""
from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"\W+")


def tokenize(text: str) -> list[str]:
    """Lower-case, drop a trailing period, split on runs of non-word characters (Python's ``\\W``,
    as the released code splits). Text is taken in Unicode's composed form (NFC), so that an accent
    typed as a separate mark joins its letter where Unicode composes the two (e and U+0301 become é); other
    combining marks (several on one letter, Devanagari's vowel signs) are not word characters to
    ``\\W`` and split the word, as in the released code.

    >>> tokenize("The man in the blue hat, on the LEFT.")
    ['the', 'man', 'in', 'the', 'blue', 'hat', 'on', 'the', 'left']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).strip().lower())
    if text.endswith("."):
        text = text[:-1]
    return [word for word in _NON_WORD.split(text) if word]
