import re

import pytest
import torch

from restr_fast.text import PAD_INDEX, SPECIAL_TOKENS, UNK_INDEX, Vocabulary


@pytest.fixture
def vocabulary():
    return Vocabulary.from_sentences(["the red circle", "The blue square.", "the red square", "a dog"])


def test_special_tokens_come_first_then_words_by_frequency(vocabulary):
    assert vocabulary.words[:4] == list(SPECIAL_TOKENS) == ["<pad>", "<go>", "<eos>", "<unk>"]
    assert vocabulary.words[4:] == ["the", "red", "square", "a", "blue", "circle", "dog"]
    assert len(vocabulary) == 11
    limited = Vocabulary.from_sentences(["the red circle", "the red square", "the dog"], min_count=2)
    assert limited.words[4:] == ["the", "red"]
    assert len(Vocabulary.from_sentences(["a b c d e"], max_size=6)) == 6


def test_encode_left_pads_and_maps_unknown_words(vocabulary):
    ids = vocabulary.encode("The red dragon.", max_words=6)
    assert ids.dtype == torch.long and ids.shape == (6,)
    assert ids.tolist() == [PAD_INDEX] * 3 + [vocabulary.index("the"), vocabulary.index("red"), UNK_INDEX]
    assert vocabulary.decode(ids) == ["the", "red", "<unk>"]
    assert vocabulary.encode("naïve façade")[-2:].tolist() == [UNK_INDEX, UNK_INDEX]
    assert vocabulary.encode_batch(["a dog", "the red circle"]).shape == (2, 20)
    none = vocabulary.encode_batch([], max_words=6)
    assert none.shape == (0, 6) and none.dtype == torch.long


@pytest.mark.parametrize("max_words", [0, -2, 2.5, True])
def test_max_words_must_be_a_positive_integer(vocabulary, max_words):
    with pytest.raises(ValueError, match="max_words must be a positive integer"):
        vocabulary.encode("the red dog", max_words)


def test_long_sentences_keep_their_first_words_with_a_warning(vocabulary):
    words = ["red"] * 19 + ["dog", "circle", "square"]
    with pytest.warns(UserWarning, match="sentence of 22 words truncated to its first 20") as caught:
        ids = vocabulary.encode(" ".join(words))
    assert caught[0].filename == __file__
    assert ids.tolist() == [vocabulary.index(w) for w in words[:20]]
    with pytest.warns(UserWarning) as caught:  # a long text is quoted by its first 80 characters
        vocabulary.encode("red dog " * 5000)
    assert str(caught[0].message) == (f"sentence of 10000 words truncated to its first 20: {('red dog ' * 10)!r}... "
                                      f"(40000 characters)")
    with pytest.raises(ValueError, match=r"^text '!!!!!.*'\.\.\. \(10000 characters\) has no words"):
        vocabulary.encode("!" * 10000)


@pytest.mark.parametrize("text", ["", "   ", "...", "!?"])
def test_empty_text_is_an_error(vocabulary, text):
    with pytest.raises(ValueError, match="has no words"):
        vocabulary.encode(text)


def test_save_and_load_round_trip(vocabulary, tmp_path):
    path = tmp_path / "vocab.txt"
    vocabulary.save(path)
    assert Vocabulary.load(path) == vocabulary
    assert not list(tmp_path.glob("*.tmp"))


def test_a_file_with_a_byte_order_mark_loads(vocabulary, tmp_path):
    path = tmp_path / "vocab.txt"
    vocabulary.save(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Notepad saves UTF-8
    assert Vocabulary.load(path) == vocabulary


def test_words_the_tokenizer_never_gives_are_named_on_load(tmp_path):
    path = tmp_path / "vocab.txt"
    Vocabulary(["red", "Red", "cafe\u0301", "u.s"]).save(path)  # capitals, an uncomposed accent, a split word
    unreachable = re.escape(str(["Red", "cafe\u0301", "u.s"]))
    with pytest.warns(UserWarning, match=rf"3 words of .*vocab.txt are not words the tokenizer gives \(e.g. {unreachable}"):
        loaded = Vocabulary.load(path)
    assert loaded.encode("Red café")[-2:].tolist() == [loaded.index("red"), UNK_INDEX]


@pytest.mark.parametrize("word", ["a\nb", "a\rb", "a b", "tab\t"])
def test_words_with_whitespace_are_refused(word):
    # tokenize never yields them, and a line break would split the word in the saved file
    with pytest.raises(ValueError, match="without whitespace"):
        Vocabulary(["red", word])


def test_bad_vocabulary_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        Vocabulary.load(tmp_path / "missing.txt")
    (tmp_path / "nospecials.txt").write_text("the\nred\n")
    with pytest.raises(ValueError, match="must start with the lines"):
        Vocabulary.load(tmp_path / "nospecials.txt")
    (tmp_path / "dup.txt").write_text("\n".join(SPECIAL_TOKENS + ("red", "red")) + "\n")
    with pytest.raises(ValueError, match="duplicate words"):
        Vocabulary.load(tmp_path / "dup.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="not UTF-8"):
        Vocabulary.load(tmp_path / "binary.txt")
