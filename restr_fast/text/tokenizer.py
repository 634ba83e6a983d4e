"""Sentence -> words, as in the released ReSTR code."""
from __future__ import annotations

import re

_NON_WORD = re.compile(r"\W+")


def tokenize(text: str) -> list[str]:
    """Lower-case, drop a trailing period, split on runs of non-word characters.

    >>> tokenize("The man in the blue hat, on the LEFT.")
    ['the', 'man', 'in', 'the', 'blue', 'hat', 'on', 'the', 'left']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    return [word for word in _NON_WORD.split(text) if word]
