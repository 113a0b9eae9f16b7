"""Vocabulary files, read by bilm-tf's rules: the token cache (`--vocab` of an export),
the token-embedding file and `TokenBatcher`, and training all read them here.

bilm-tf's `Vocabulary`: one word a line, surrounding whitespace stripped; ids count
lines in file order, except that lines reading `!!!MAXTERMID` are skipped; a word listed
twice keeps both rows and looks up to its last one; `<S>`, `</S>` and `<UNK>` are found
by their text. What each user needs beyond that is a method of its own:
`distinct_words` (the token cache: blank lines and repeats dropped, `<S>`/`</S>` always
in) and `check_training` (training: the special tokens first, each word once, sorted by
count).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

from hub_export.errors import VocabError
from hub_export.model.char_ids import BOS_TOKEN, EOS_TOKEN
from hub_export.textfiles import read_lines

UNK_TOKEN = "<UNK>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # a training vocabulary's first lines
SKIPPED_LINE = "!!!MAXTERMID"  # bilm-tf's Vocabulary drops lines reading this


class Vocabulary:
    """A vocabulary file read as bilm-tf's `Vocabulary` reads it (see the module doc).

    Args:
        path: str or PathLike. One word a line, UTF-8.
        flag: str. The flag the file came from, for messages.

    Attributes:
        words: list of str, by id. `lines`: the line number of each word, for messages.
        `bos`, `eos`, `unk`: the ids of `<S>`, `</S>`, `<UNK>`, or -1 when the file
        lacks them (bilm-tf's convention).
    """

    def __init__(self, path: str | os.PathLike, flag: str = "--vocab"):
        self.path = Path(path)
        self.flag = flag
        self.words: list[str] = []
        self.lines: list[int] = []
        self._ids: dict[str, int] = {}
        self.bos = self.eos = self.unk = -1
        for number, line in read_lines(self.path, flag, "vocabulary file", VocabError):
            word = line.strip()
            if word == SKIPPED_LINE:
                continue
            index = len(self.words)
            if word == BOS_TOKEN:
                self.bos = index
            elif word == EOS_TOKEN:
                self.eos = index
            elif word == UNK_TOKEN:
                self.unk = index
            self.words.append(word)
            self.lines.append(number)
            self._ids[word] = index

    @property
    def size(self) -> int:
        return len(self.words)

    def word_to_id(self, word: str) -> int:
        """The word's id; `unk` (-1 without `<UNK>`) for a word not in the file."""
        return self._ids.get(word, self.unk)

    def __contains__(self, word: str) -> bool:
        return word in self._ids

    def _error(self, text: str) -> VocabError:
        return VocabError(f"{self.flag}: {self.path}: {text}")

    def distinct_words(self) -> list[str]:
        """Each word once, in file order, blank lines dropped, `<S>` and `</S>` added at the
        end when missing: the rows of an export's token cache."""
        words = list(dict.fromkeys(w for w in self.words if w))
        if not words:
            raise self._error("no tokens in the file")
        words += [t for t in (BOS_TOKEN, EOS_TOKEN) if t not in self._ids]
        return words

    def check_training(self, counts: collections.Counter | None = None) -> "Vocabulary":
        """Checks bilm-tf's rules for a training vocabulary; returns self.

        Args:
            counts: word counts of the training files; when given, the words after the
                three special tokens must be in non-increasing order of these counts.

        Raises:
            VocabError: naming the file, the line and what is wrong.
        """
        for i, token in enumerate(SPECIAL_TOKENS):
            if i >= self.size or self.words[i] != token:
                found = repr(self.words[i]) if i < self.size else "the end of the file"
                raise self._error(
                    f"line {self.lines[i] if i < self.size else i + 1} should be {token} but is "
                    f"{found}: a training vocabulary starts with {', '.join(SPECIAL_TOKENS)} on "
                    "its first three lines, then the words by descending count")
        seen: dict[str, int] = {}
        for word, line in zip(self.words, self.lines):
            if word in seen:
                raise self._error(f"line {line}: {word!r} is listed again (first on line "
                                  f"{seen[word]}); each word once")
            if not word:
                raise self._error(f"line {line} is empty; one word a line")
            seen[word] = line
        if self.size == len(SPECIAL_TOKENS):
            raise self._error("only the special tokens; no word to predict")
        if counts is not None:
            previous_word, previous = None, None
            for word, line in zip(self.words[3:], self.lines[3:]):
                count = counts.get(word, 0)
                if previous is not None and count > previous:
                    raise self._error(
                        f"line {line}: {word!r} occurs {count} times in the training files but "
                        f"comes after {previous_word!r} ({previous} times): the words must be "
                        "sorted by descending count (the sampled softmax assumes it; build the "
                        "file with `hub_export.model.vocab.write_vocab`, or pass "
                        "--no-check-vocab-order for a vocabulary counted on other text)")
                previous_word, previous = word, count
        return self


def write_vocab(path: str | os.PathLike, counts: collections.Counter, min_count: int = 1,
                max_size: int | None = None) -> int:
    """Writes a training vocabulary: the special tokens, then words by descending count
    (ties by the word), keeping words seen at least `min_count` times. Returns its size."""
    words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
                   key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[:max(0, max_size - len(SPECIAL_TOKENS))]
    with open(path, "w", encoding="utf-8") as f:
        for word in SPECIAL_TOKENS + tuple(words):
            f.write(word + "\n")
    return len(words) + len(SPECIAL_TOKENS)
