import numpy as np
import pytest
import torch

from restr_fast.text import PAD_INDEX, UNK_INDEX, Vocabulary, load_glove

VECTORS = {"the": [0.1, 0.2, 0.3], "Red": [1.0, -1.0, 0.5], "red": [2.0, 2.0, 2.0], "dog": [-0.5, 0.25, 4.0],
           ". . .": [9.0, 9.0, 9.0], "unused": [7.0, 7.0, 7.0]}


@pytest.fixture
def vocabulary():
    return Vocabulary(["the", "red", "dog", "circle"])


@pytest.fixture
def glove_txt(tmp_path):
    path = tmp_path / "glove.tiny.3d.txt"
    lines = [f"{word} {' '.join(str(v) for v in vector)}" for word, vector in VECTORS.items()]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def test_text_format_fills_the_vocabularys_rows(glove_txt, vocabulary):
    table = load_glove(glove_txt, vocabulary)
    assert table.shape == (len(vocabulary), 3) and table.dtype == torch.float32
    assert not table[PAD_INDEX].any()
    for word in ("the", "dog"):
        assert table[vocabulary.index(word)].tolist() == pytest.approx(VECTORS[word])
    assert table[vocabulary.index("red")].tolist() == pytest.approx(VECTORS["red"])  # exact case wins
    assert table[vocabulary.index("circle")].abs().sum() > 0  # missing: random
    found = [VECTORS[word] for word in ("the", "red", "dog")]
    assert table[UNK_INDEX].tolist() == pytest.approx(np.mean(found, axis=0).tolist())  # never random
    torch.testing.assert_close(load_glove(glove_txt, vocabulary, seed=3), load_glove(glove_txt, vocabulary, seed=3))


def test_lower_cased_match_and_mean_for_missing(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("Red 1 2 3\nthe 3 2 1\n")
    vocabulary = Vocabulary(["red", "the", "circle"])
    table = load_glove(path, vocabulary, missing="mean")
    assert table[vocabulary.index("red")].tolist() == [1, 2, 3]
    assert table[vocabulary.index("circle")].tolist() == [2, 2, 2]
    assert table[UNK_INDEX].tolist() == [2, 2, 2]


def test_npy_matrix_with_its_word_list(tmp_path, vocabulary):
    words = list(VECTORS)
    np.save(tmp_path / "glove.npy", np.array(list(VECTORS.values()), dtype=np.float32))
    (tmp_path / "glove.txt").write_text("\n".join(words) + "\n")
    table = load_glove(tmp_path / "glove.npy", vocabulary, dim=3)
    assert table[vocabulary.index("dog")].tolist() == pytest.approx(VECTORS["dog"])
    (tmp_path / "other-words.txt").write_text("\n".join(words[:2]) + "\n")
    with pytest.raises(ValueError, match="expected \\(2, D\\)"):
        load_glove(tmp_path / "glove.npy", vocabulary, words_path=tmp_path / "other-words.txt")
    with pytest.raises(ValueError, match="vectors of size 3, expected 300"):
        load_glove(tmp_path / "glove.npy", vocabulary, dim=300)
    np.save(tmp_path / "alone.npy", np.zeros((2, 3)))
    with pytest.raises(FileNotFoundError, match="word list of .*alone.npy not found"):
        load_glove(tmp_path / "alone.npy", vocabulary)


def test_an_npy_word_list_with_a_byte_order_mark(tmp_path, vocabulary):
    np.save(tmp_path / "glove.npy", np.array([[1, 1, 1], [2, 2, 2]], dtype=np.float32))
    (tmp_path / "glove.txt").write_text("\ufeffthe\nred\n", encoding="utf-8")  # as Notepad saves UTF-8
    assert load_glove(tmp_path / "glove.npy", vocabulary)[vocabulary.index("the")].tolist() == [1, 1, 1]


def test_an_npy_matrix_beside_its_glove_text_file_is_not_read_with_it_as_the_word_list(glove_txt, vocabulary):
    """The default word list of glove.tiny.3d.npy is glove.tiny.3d.txt: here the text file of the
    same vectors, as one would have it after converting it, whose lines are a word and the numbers."""
    matrix_path = glove_txt.with_suffix(".npy")
    np.save(matrix_path, np.array(list(VECTORS.values()), dtype=np.float32))
    with pytest.raises(ValueError, match="holds a word and 3 numbers a line: it is a GloVe text file, not a word list"):
        load_glove(matrix_path, vocabulary)
    (glove_txt.parent / "words.txt").write_text("\n".join(VECTORS) + "\n")
    torch.testing.assert_close(load_glove(matrix_path, vocabulary, words_path=glove_txt.parent / "words.txt"),
                               load_glove(glove_txt, vocabulary))


def test_a_byte_order_mark_and_a_word2vec_header_are_skipped(tmp_path, vocabulary):
    (tmp_path / "plain.txt").write_text("the 1 2 3\nred 4 5 6\n")
    (tmp_path / "marked.txt").write_text("\ufeff2 3\nthe 1 2 3\nred 4 5 6\n", encoding="utf-8")
    plain, marked = (load_glove(tmp_path / name, vocabulary, missing="mean") for name in ("plain.txt", "marked.txt"))
    assert torch.equal(plain, marked) and marked[vocabulary.index("the")].tolist() == [1, 2, 3]


def test_glove_table_loads_into_a_model(glove_txt, vocabulary):
    from restr_fast import build_model
    table = load_glove(glove_txt, vocabulary)
    model = build_model("restr-tiny", vocab_size=len(vocabulary), word_dim=3, text_heads=1, word_vectors=table)
    assert torch.equal(model.language.embed.weight.detach(), table)


def test_bad_glove_files_are_named(tmp_path, vocabulary):
    with pytest.raises(FileNotFoundError, match="GloVe file not found"):
        load_glove(tmp_path / "missing.txt", vocabulary)
    (tmp_path / "short.txt").write_text("the 1 2 3\nred 1 2\n")
    with pytest.raises(ValueError, match="short.txt, line 2: expected a word and 3 numbers"):
        load_glove(tmp_path / "short.txt", vocabulary)
    (tmp_path / "nan.txt").write_text("the 1 2 3\nred 1 x 3\n")
    with pytest.raises(ValueError, match="nan.txt, line 2"):
        load_glove(tmp_path / "nan.txt", vocabulary)
    (tmp_path / "unused.txt").write_text("the 1 2 3\nzebra 1 x 3\n")  # only the vocabulary's numbers are parsed
    assert load_glove(tmp_path / "unused.txt", vocabulary)[vocabulary.index("the")].tolist() == [1, 2, 3]
    (tmp_path / "dim.txt").write_text("the 1 2 3\n")
    with pytest.raises(ValueError, match="expected a word and 300 numbers"):
        load_glove(tmp_path / "dim.txt", vocabulary, dim=300)
    (tmp_path / "wider.txt").write_text("zebra 1 2 3 4 5\nthe 1 2 3 4 5\n")  # 5-d vectors for a 3-d table
    with pytest.raises(ValueError, match="wider.txt, line 1: vectors of 5 numbers, expected 3 .*word_dim"):
        load_glove(tmp_path / "wider.txt", vocabulary, dim=3)
    (tmp_path / "numbers.txt").write_text("1999 1 2 3\nthe 1 2 3\n")  # a first word that is a number
    assert load_glove(tmp_path / "numbers.txt", vocabulary, dim=3)[vocabulary.index("the")].tolist() == [1, 2, 3]
    (tmp_path / "none.txt").write_text("zebra 1 2 3\n")
    with pytest.raises(ValueError, match="none of the 8 vocabulary words has a vector"):
        load_glove(tmp_path / "none.txt", vocabulary)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\xfa 1 2\n")
    with pytest.raises(ValueError, match="not a UTF-8 GloVe text file"):
        load_glove(tmp_path / "binary.txt", vocabulary)
    (tmp_path / "infinite.txt").write_text("the 1 2 3\nred 1 inf 3\n")
    with pytest.raises(ValueError, match="infinite.txt, line 2: the vector of 'red' is not finite"):
        load_glove(tmp_path / "infinite.txt", vocabulary)
    (tmp_path / "header.txt").write_text("2 4\nthe 1 2 3 4\n")
    with pytest.raises(ValueError, match="its header line says vectors of size 4, expected 3"):
        load_glove(tmp_path / "header.txt", vocabulary, dim=3)
    with pytest.raises(ValueError, match="missing must be one of"):
        load_glove(tmp_path / "none.txt", vocabulary, missing="zero")
