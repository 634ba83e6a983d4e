import pytest

from restr_fast.text import tokenize


@pytest.mark.parametrize("text, words", [
    ("The man in the blue hat.", ["the", "man", "in", "the", "blue", "hat"]),
    ("  LEFT guy , red shirt!!  ", ["left", "guy", "red", "shirt"]),
    ("man's hat -- on the far-left", ["man", "s", "hat", "on", "the", "far", "left"]),
    ("2nd from right.", ["2nd", "from", "right"]),
    ("a...b", ["a", "b"]),
    ("Café crème", ["café", "crème"]),
    ("Cafe\u0301 cre\u0300me", ["café", "crème"]),  # accents as separate marks (NFD) compose
    ("", []),
    ("   .  ", []),
])
def test_tokenize(text, words):
    assert tokenize(text) == words


def test_tokenize_refuses_non_strings():
    with pytest.raises(TypeError, match="text must be a str"):
        tokenize(["a", "list"])
