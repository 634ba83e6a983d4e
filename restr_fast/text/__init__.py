"""Text side: tokenizer, vocabulary and GloVe word vectors."""
from .glove import load_glove
from .tokenizer import tokenize
from .vocabulary import (EOS_INDEX, GO_INDEX, MAX_WORDS, PAD_INDEX, SPECIAL_TOKENS, UNK_INDEX,
                         Vocabulary)

__all__ = ["tokenize", "Vocabulary", "load_glove", "SPECIAL_TOKENS", "PAD_INDEX", "GO_INDEX",
           "EOS_INDEX", "UNK_INDEX", "MAX_WORDS"]
