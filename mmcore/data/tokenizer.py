"""Tokenizers: build a BERT-style WordPiece vocabulary from a corpus, or load any local tokenizer directory."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mmcore.data.fileio import write_lines
from mmcore.errors import MMCoreError
from mmcore.hubcache import local_path, not_found_hint

__all__ = ["SPECIAL_TOKENS", "build_wordpiece", "load_tokenizer", "word_token_ids"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_FILE = "vocab.txt"


def build_wordpiece(texts: Iterable[str], path: str | os.PathLike[str], vocab_size: int,
                    required: Sequence[str] = ()) -> Path:
    """Build a lowercase BERT WordPiece vocabulary and write ``<path>/vocab.txt``; returns that file.

    Special tokens come first ([PAD]=0, [UNK], [CLS], [SEP], [MASK]), then every character (alone and as a
    ``##`` continuation), then words. When every word of the corpus fits in ``vocab_size`` (a closed vocabulary
    such as synthworld's) each word becomes a whole token and the result is deterministic. Otherwise the
    ``tokenizers`` WordPiece trainer learns sub-words; its tie-breaking varies between runs, so keep the file.
    Every word of ``required`` (e.g. the detector's object and attribute names) is always a whole token.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    texts = list(texts)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    for word in required:
        word = normalizer.normalize_str(word)
        if len(splitter.pre_tokenize_str(word)) != 1:
            raise MMCoreError(f"required token {word!r} is several words; only single words can be whole tokens")
        counts[word] += 0  # present, even if the corpus never uses it
    chars = sorted({c for w in counts for c in w})
    alphabet = chars + ["##" + c for c in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    if len(SPECIAL_TOKENS) + len(alphabet) + len(words) <= vocab_size:
        vocab = [*SPECIAL_TOKENS, *alphabet, *words]
    else:
        vocab = _train_wordpiece(texts, vocab_size, alphabet)
        known = set(vocab)
        vocab += [w for w in (normalizer.normalize_str(r) for r in required) if w not in known]
    out = Path(path) / VOCAB_FILE
    write_lines(out, vocab)
    return out


def _train_wordpiece(texts: list[str], vocab_size: int, alphabet: list[str]) -> list[str]:
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True, strip_accents=True)
    tokenizer.train_from_iterator(texts, vocab_size=int(vocab_size), min_frequency=1,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    vocab = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise MMCoreError(f"WordPiece training did not put the special tokens first: {vocab[:5]}")
    known = set(vocab)
    # Every character alone and as a continuation, so no word of the corpus becomes [UNK].
    return vocab + [c for c in alphabet if c not in known]


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """A fast tokenizer from a local directory, offline.

    A Hugging Face tokenizer directory (``tokenizer.json`` or ``tokenizer_config.json``) loads through
    ``AutoTokenizer``; a bare ``vocab.txt`` loads as a lowercase ``BertTokenizerFast``. A Hub id
    (``bert-base-uncased``) names that model's snapshot in the local Hugging Face cache; nothing is downloaded.
    """
    directory = local_path(directory)
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
    if (directory / VOCAB_FILE).is_file():
        from transformers import BertTokenizerFast

        # from_pretrained rather than BertTokenizerFast(vocab_file=...): transformers 5 ignores `vocab_file`
        # in the constructor and would silently build a 5-token vocabulary.
        return BertTokenizerFast.from_pretrained(str(directory), local_files_only=True, do_lower_case=True)
    raise MMCoreError(f"{directory}: no tokenizer found (expected tokenizer.json, tokenizer_config.json or "
                      f"{VOCAB_FILE}){not_found_hint(directory) if not directory.exists() else ''}")


def word_token_ids(tokenizer: Any, words: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The WordPiece ids of each word or name, without special tokens (one tuple per word)."""
    return tuple(tuple(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words)
