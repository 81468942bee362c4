"""Invented, pronounceable names built from syllables, so no entity collides with real-world knowledge."""

from __future__ import annotations

import random
from collections.abc import Sequence

from chatforge.configs import RecipeError

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "tr",
    "st",
    "th",
    "sh",
    "gl",
    "fr",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou")
_CODAS = ("n", "r", "l", "s", "m", "k", "th", "nd", "rn", "v")

# kind -> (min syllables, max syllables, endings, min length, max length)
_KINDS: dict[str, tuple[int, int, tuple[str, ...], int, int]] = {
    "first": (1, 2, ("a", "o", "en", "ia", "is", "el", "an", "i", "ar", "ine"), 4, 8),
    "surname": (2, 2, ("e", "ane", "ick", "ell", "ow", "en", "ard", "ley", "ix", "ost"), 5, 10),
    "city": (1, 2, ("vik", "holm", "dor", "mere", "ford", "burg", "wick", "grad", "stad", "port"), 5, 10),
    "country": (1, 2, ("ia", "and", "ara", "esh", "ovia", "eth", "onia", "avia"), 5, 10),
    "org": (1, 2, ("ex", "a", "on", "is", "ix", "o", "um", "ys"), 5, 9),
}


class NameGenerator:
    """Draws unique invented words; no word is a substring of another (case-insensitive)."""

    def __init__(self, rng: random.Random, max_tries: int = 5000) -> None:
        self._rng = rng
        self._max_tries = max_tries
        self._taken: list[str] = []

    def _syllable(self) -> str:
        syllable = self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS)
        if self._rng.random() < 0.3:
            syllable += self._rng.choice(_CODAS)
        return syllable

    def _candidate(self, kind: str) -> str:
        low, high, endings, _, _ = _KINDS[kind]
        stem = "".join(self._syllable() for _ in range(self._rng.randint(low, high)))
        ending = self._rng.choice(endings)
        if stem[-1] in "aeiou" and ending[0] in "aeiou":
            stem = stem.rstrip("aeiou") or stem
        return (stem + ending).capitalize()

    def _clashes(self, word: str) -> bool:
        low = word.lower()
        return any(low in taken or taken in low for taken in self._taken)

    def reserve(self, words: Sequence[str]) -> None:
        """Treat `words` as taken, so no new word equals or overlaps one of them (e.g. another world's names)."""
        self._taken.extend(word.lower() for word in words if word)

    def new(self, kind: str) -> str:
        """A fresh word of `kind` ("first", "surname", "city", "country" or "org")."""
        _, _, _, min_len, max_len = _KINDS[kind]
        for _ in range(self._max_tries):
            word = self._candidate(kind)
            if min_len <= len(word) <= max_len and not self._clashes(word):
                self._taken.append(word.lower())
                return word
        raise RecipeError(
            f"could not invent {len(self._taken) + 1} distinct names; lower num_people, num_cities or num_organisations"
        )

    def many(self, kind: str, count: int) -> list[str]:
        """`count` fresh words of `kind`."""
        return [self.new(kind) for _ in range(count)]


def slugify(text: str, separator: str = "-") -> str:
    """Lower-case URL slug: `Talia Morvane` -> `talia-morvane`."""
    words = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    return separator.join(words)


def join_names(names: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
