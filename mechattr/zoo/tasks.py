"""Synthetic tasks with planted ground truth: which input word decides the answer is known.

Each task speaks its own small word vocabulary (one token per word, split on spaces). An
:class:`Example` holds the prompt (words joined by single spaces, no BOS), the answer word, the
word positions that determine the answer (``truth``) and, where the task has them, positions
that look relevant but are not (``distractors``). Positions count prompt words from 0; a model
that prepends BOS shifts them by one (:func:`token_positions`).

Generation is pure Python with a seeded :class:`random.Random`, so a (task, seed, n) triple
always gives the same examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

SPECIAL = ("<bos>", "<pad>", "<unk>")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    truth: tuple[int, ...]
    distractors: tuple[int, ...] = ()
    # Another answer the model must rank lower (agreement: the verb of the other number).
    foil: str | None = None

    @property
    def words(self) -> list[str]:
        return self.prompt.split(" ")


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    words: tuple[str, ...]  # every non-special word of the vocabulary
    answers: tuple[str, ...]  # the words an answer can be
    _sample: Callable[[random.Random], Example]
    max_words: int

    @property
    def vocab(self) -> dict[str, int]:
        """Word -> id; the special tokens come first (``<bos>`` is 0)."""
        return {w: i for i, w in enumerate(SPECIAL + self.words)}

    @property
    def chance(self) -> float:
        return 1.0 / len(self.answers)

    def sample(self, rng: random.Random) -> Example:
        return self._sample(rng)

    def examples(self, n: int, seed: int = 0) -> list[Example]:
        rng = random.Random(f"{self.name}:{seed}")
        return [self._sample(rng) for _ in range(n)]


def token_positions(positions: tuple[int, ...], prepend_bos: bool) -> tuple[int, ...]:
    """Word positions -> token positions for a model that does (or does not) prepend BOS."""
    off = 1 if prepend_bos else 0
    return tuple(p + off for p in positions)


# ----- agreement ------------------------------------------------------------------------------
_NOUNS = (
    ("key", "keys"), ("cabinet", "cabinets"), ("dog", "dogs"), ("table", "tables"),
    ("author", "authors"), ("book", "books"), ("door", "doors"), ("friend", "friends"),
    ("car", "cars"), ("picture", "pictures"), ("teacher", "teachers"), ("box", "boxes"),
    ("song", "songs"), ("house", "houses"), ("lamp", "lamps"), ("girl", "girls"),
)
_PREPS = ("to", "of", "near", "behind", "with", "on", "under", "for")
_ADJS = ("old", "red", "small", "new", "big", "green")


def _agreement(rng: random.Random) -> Example:
    """the [adj] SUBJ P the [adj] ATTR [P the [adj] ATTR2]  ->  is/are (number of SUBJ)."""
    words: list[str] = []

    def np_(plural: bool) -> int:
        words.append("the")
        if rng.random() < 0.4:
            words.append(rng.choice(_ADJS))
        words.append(rng.choice(_NOUNS)[int(plural)])
        return len(words) - 1

    subj_plural = rng.random() < 0.5
    subj = np_(subj_plural)
    attractors = []
    for _ in range(rng.choice((1, 1, 2))):
        words.append(rng.choice(_PREPS))
        # Attractors mostly disagree with the subject: the hard (and informative) case.
        attractors.append(np_(subj_plural if rng.random() < 0.25 else not subj_plural))
    answer, foil = ("are", "is") if subj_plural else ("is", "are")
    return Example(" ".join(words), answer, (subj,), tuple(attractors), foil)


AGREEMENT = Task(
    name="agreement",
    description="subject-verb number agreement across attractors: 'the key to the cabinets' -> 'is'; "
    "truth = the subject noun, distractors = the attractor nouns",
    words=tuple(sorted({w for pair in _NOUNS for w in pair} | set(_PREPS) | set(_ADJS) | {"the", "is", "are"})),
    answers=("is", "are"),
    _sample=_agreement,
    max_words=16,
)


# ----- induction ------------------------------------------------------------------------------
_SYLLABLES = tuple(c + v for c in "bdfgklmnprst" for v in "aiou")[:40]


def _induction(rng: random.Random) -> Example:
    """x_0 .. x_{L-1} x_k (distinct x_i)  ->  x_{k+1}; truth = (k+1, k, L): the copied token,
    the first occurrence of the repeated token and the repeated token itself."""
    length = rng.randint(8, 14)
    seq = rng.sample(_SYLLABLES, length)
    k = rng.randint(0, length - 2)
    words = seq + [seq[k]]
    return Example(" ".join(words), seq[k + 1], (k + 1, k, length))


INDUCTION = Task(
    name="induction",
    description="copy the token that followed the earlier occurrence of the last token; "
    "truth = that earlier follower, the earlier occurrence and the repeated last token",
    words=_SYLLABLES,
    answers=_SYLLABLES,
    _sample=_induction,
    max_words=15,
)


# ----- recall ---------------------------------------------------------------------------------
_ENTITIES = (
    "zorvia", "melandor", "quentaris", "brisol", "tarnakh", "vellmoor", "ostrava", "kelbrin",
    "dunmere", "solvane", "praxis", "ulmrath", "gavrosh", "lirion", "nemeth", "corvale",
    "atheris", "brumvik", "saltra", "yvenne", "morlund", "harvex", "pellion", "tovark",
)
_CITIES = (
    "arden", "belcast", "corwin", "daskel", "emberton", "faroth", "glenmar", "hollin",
    "ishtal", "jorvik", "kestrel", "lunmoor", "mirthal", "norwood", "ostwick", "pyrmont",
    "quillon", "rivenby", "stoneholt", "thalmar", "umberlin", "varkeep", "westerly", "yarrow",
)
# The planted fact base: a fixed bijection entity -> capital (independent of any seed).
FACTS: dict[str, str] = {e: _CITIES[(7 * i + 3) % len(_CITIES)] for i, e in enumerate(_ENTITIES)}
_FILLERS = ("well", "so", "now", "indeed", "today", "we", "know", "that", "as", "you", "recall", "maybe")


def _recall(rng: random.Random) -> Example:
    """[fillers] the capital of ENTITY [fillers] is  ->  FACTS[ENTITY]; truth = the entity."""
    words = [rng.choice(_FILLERS) for _ in range(rng.randint(0, 4))]
    words += ["the", "capital", "of"]
    entity = rng.choice(_ENTITIES)
    words.append(entity)
    pos = len(words) - 1
    words += [rng.choice(_FILLERS) for _ in range(rng.randint(0, 2))]
    words.append("is")
    return Example(" ".join(words), FACTS[entity], (pos,))


RECALL = Task(
    name="recall",
    description="look up an entity's capital in a planted fact base: '... the capital of zorvia ... is' "
    "-> its city; truth = the entity token, surrounded by filler words",
    words=tuple(sorted(set(_ENTITIES) | set(_CITIES) | set(_FILLERS) | {"the", "capital", "of", "is"})),
    answers=_CITIES,
    _sample=_recall,
    max_words=12,
)

TASKS: dict[str, Task] = {t.name: t for t in (AGREEMENT, INDUCTION, RECALL)}


def get_task(name: str) -> Task:
    from ..errors import InputError

    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise InputError(f"Unknown zoo task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name]


__all__ = ["Example", "Task", "TASKS", "get_task", "token_positions", "FACTS", "AGREEMENT", "INDUCTION", "RECALL"]
