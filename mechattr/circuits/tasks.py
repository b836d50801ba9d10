"""Offline prompt-pair generators for circuit discovery.

Each generator returns a list of :class:`Pair` (clean prompt, corrupted prompt of the same token
length, target token and contrast token), ready for :func:`mechattr.circuits.edge_attribution`
(pass the list as ``clean`` with ``corrupt=None``). :func:`load_pairs` reads user pairs from JSONL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Pair:
    clean: str
    corrupt: str
    target: Any = None
    contrast: str | None = None
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


import json
import random
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError
from ..tl.adapter import as_adapter

_NAMES = ("Mary", "John", "Alice", "Bob", "Tom", "James", "Sarah", "David", "Anna", "Paul", "Kate",
          "Mark", "Lisa", "Peter", "Emma", "Jack", "Laura", "Mike", "Susan", "Chris", "Linda", "Daniel",
          "Rachel", "Steve", "Karen", "George", "Helen", "Frank", "Julia", "Henry")
_IOI_TEMPLATES = (
    "When {A} and {B} went to the store, {B} gave a drink to",
    "When {A} and {B} went to the park, {B} gave a ball to",
    "After {A} and {B} met at the office, {B} handed a letter to",
    "Then, {A} and {B} had a long argument, and afterwards {B} said to",
    "While {A} and {B} were working at the school, {B} sent a message to",
    "Friends {A} and {B} found a bone at the beach. {B} gave it to",
)
_NOUNS = (("key", "keys"), ("dog", "dogs"), ("book", "books"), ("car", "cars"), ("friend", "friends"),
          ("door", "doors"), ("table", "tables"), ("teacher", "teachers"), ("house", "houses"), ("girl", "girls"),
          ("boy", "boys"), ("picture", "pictures"), ("song", "songs"), ("road", "roads"), ("bird", "birds"))
_ATTRACTORS = ("cabinets", "tables", "windows", "doctors", "boxes", "gardens", "rooms", "trees")
_PREPS = ("to", "near", "behind", "of", "with", "beside")
_CAPITALS = (("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
             ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"),
             ("England", "London"), ("China", "Beijing"), ("Canada", "Ottawa"), ("Austria", "Vienna"),
             ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"))
_EVENTS = ("war", "expedition", "reign", "project", "drought", "journey", "construction", "strike")


def _single(adapter: Any, text: str) -> bool:
    return len(adapter.encode_continuation(text)) == 1


def _same_len(adapter: Any, a: str, b: str) -> bool:
    return adapter.tokenize(a).shape[-1] == adapter.tokenize(b).shape[-1]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}.")


def ioi(model: Any, n: int = 8, seed: int = 0) -> list[Pair]:
    """Indirect object identification (Wang et al. 2023): 'When Mary and John went to the store,
    John gave a drink to' -> ' Mary' vs ' John'. Corrupt: the three names replaced by three other
    names (the 'ABC' corruption of EAP-IG), so the answer is no longer identifiable. Only names
    that are one token (with a leading space) in the model's tokenizer are used."""
    _check_n(n)
    a = as_adapter(model)
    names = [x for x in _NAMES if _single(a, " " + x)]
    if len(names) < 5:
        raise InputError("Fewer than five of mechattr's IOI names are single tokens in this tokenizer.")
    rng = random.Random(f"ioi:{seed}")
    out: list[Pair] = []
    while len(out) < n:
        t = rng.choice(_IOI_TEMPLATES)
        A, B, C, D, E = rng.sample(names, 5)
        clean = t.replace("{A}", A).replace("{B}", B)
        # ABC: fresh names in every slot (the repeated name too)
        corrupt = t.replace("{A}", C).replace("{B}", D, 1).replace("{B}", E)
        if _same_len(a, clean, corrupt):
            out.append(Pair(clean, corrupt, " " + A, " " + B))
    return out


def agreement(model: Any, n: int = 8, seed: int = 0) -> list[Pair]:
    """Subject-verb agreement across an attractor: 'The key to the cabinets' -> ' is' vs ' are'.
    Corrupt: the subject in the other number ('The keys to the cabinets'), same length."""
    _check_n(n)
    a = as_adapter(model)
    nouns = [(s, p) for s, p in _NOUNS if _single(a, " " + s) and _single(a, " " + p)]
    if not nouns or not (_single(a, " is") and _single(a, " are")):
        raise InputError("The agreement task needs ' is', ' are' and its nouns as single tokens.")
    rng = random.Random(f"agreement:{seed}")
    out: list[Pair] = []
    while len(out) < n:
        s, p = rng.choice(nouns)
        tail = f" {rng.choice(_PREPS)} the {rng.choice(_ATTRACTORS)}"
        if rng.random() < 0.5:
            clean, corrupt, t, f = f"The {s}{tail}", f"The {p}{tail}", " is", " are"
        else:
            clean, corrupt, t, f = f"The {p}{tail}", f"The {s}{tail}", " are", " is"
        if _same_len(a, clean, corrupt):
            out.append(Pair(clean, corrupt, t, f))
    return out


def capital(model: Any, n: int = 8, seed: int = 0) -> list[Pair]:
    """Factual recall: 'The capital of France is' -> ' Paris' vs ' Rome', corrupt 'The capital of
    Italy is' (the France -> Italy counterfactual first; then other country pairs)."""
    _check_n(n)
    a = as_adapter(model)
    ok = [(c, k) for c, k in _CAPITALS if _single(a, " " + c) and _single(a, " " + k)]
    if len(ok) < 2:
        raise InputError("Fewer than two country/capital pairs are single tokens in this tokenizer.")
    rng = random.Random(f"capital:{seed}")
    combos = [(ok[0], ok[1])] if ok[0][0] == "France" and ok[1][0] == "Italy" else []
    out: list[Pair] = []
    guard = 0
    while len(out) < n and guard < 100 * n:
        guard += 1
        x, y = combos.pop(0) if combos else tuple(rng.sample(ok, 2))
        clean, corrupt = f"The capital of {x[0]} is", f"The capital of {y[0]} is"
        if _same_len(a, clean, corrupt):
            out.append(Pair(clean, corrupt, " " + x[1], " " + y[1]))
    return out


def _year_target(ids_gt: list[int], ids_le: list[int]) -> Callable:
    gt, le = torch.tensor(ids_gt), torch.tensor(ids_le)

    def fn(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits[:, -1], dim=-1)
        return p[:, gt.to(p.device)].sum(-1) - p[:, le.to(p.device)].sum(-1)

    return fn


def greater_than(model: Any, n: int = 8, seed: int = 0) -> list[Pair]:
    """Greater-than (Hanna et al. 2023): 'The war lasted from the year 1732 to the year 17' ->
    a later year. Metric: probability of the year continuations above YY minus those at or below
    (two-digit tokens), or, for a tokenizer that splits digits, of the tens digits above minus
    below YY's tens digit. Corrupt: YY = 01."""
    from ..targets import FunctionTarget

    _check_n(n)
    a = as_adapter(model)
    tok = a.tokenizer
    two = [tok(f"{y:02d}", add_special_tokens=False)["input_ids"] for y in range(100)]
    two_digit = all(len(t) == 1 for t in two)
    digits = [tok(str(d), add_special_tokens=False)["input_ids"] for d in range(10)]
    if not two_digit and not all(len(t) == 1 for t in digits):
        raise InputError("greater_than needs two-digit or single-digit number tokens in the tokenizer.")
    rng = random.Random(f"greater_than:{seed}")
    out: list[Pair] = []
    guard = 0
    while len(out) < n and guard < 100 * n:
        guard += 1
        cc, yy = rng.choice((11, 12, 13, 14, 15, 16, 17, 18)), rng.randint(2, 98)
        if not two_digit and yy // 10 in (0, 9):
            continue
        ev = rng.choice(_EVENTS)
        clean = f"The {ev} lasted from the year {cc}{yy:02d} to the year {cc}"
        corrupt = f"The {ev} lasted from the year {cc}01 to the year {cc}"
        if not _same_len(a, clean, corrupt):
            continue
        if two_digit:
            gt = [two[y][0] for y in range(yy + 1, 100)]
            le = [two[y][0] for y in range(0, yy + 1)]
        else:
            t = yy // 10
            gt = [digits[d][0] for d in range(t + 1, 10)]
            le = [digits[d][0] for d in range(0, t)]
        out.append(Pair(clean, corrupt, FunctionTarget(_year_target(gt, le), label=f"P(year > {cc}{yy:02d}) - P(<=)")))  # type: ignore[arg-type]
    if len(out) < n:
        raise InputError("Could not build greater-than pairs of equal token length with this tokenizer.")
    return out


def load_pairs(path: str | Path) -> list[Pair]:
    """User pairs from JSONL: one object per line with ``clean``, ``corrupt`` and optionally
    ``target``, ``contrast``, ``kind``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"The pairs file {p} does not exist; give a JSONL file with one pair per line.")
    out: list[Pair] = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{i} is not valid JSON ({e.msg}).") from e
        if not isinstance(d, dict) or not isinstance(d.get("clean"), str) or not isinstance(d.get("corrupt"), str):
            raise InputError(f"{p}:{i} needs string fields 'clean' and 'corrupt' (optional 'target', 'contrast', 'kind').")
        extra = set(d) - {"clean", "corrupt", "target", "contrast", "kind"}
        if extra:
            raise InputError(f"{p}:{i} has unknown fields {sorted(extra)}.")
        out.append(Pair(d["clean"], d["corrupt"], d.get("target"), d.get("contrast"), d.get("kind")))
    if not out:
        raise InputError(f"{p} holds no pairs.")
    return out


def zoo_pairs(task: str, n: int = 8, seed: int = 0) -> list[Pair]:
    """Clean/corrupt pairs for the zoo models (``zoo:induction``, ``zoo:agreement``,
    ``zoo:recall``), built from the zoo task's own examples so the ground truth is known.

    induction: the earlier occurrence of the last token replaced by a syllable that appears nowhere
    else in the prompt (nothing to copy), metric the answer's logit. agreement: the subject noun
    swapped for its other number, metric answer − foil. recall: the entity swapped for one with
    another fact, metric answer − the other entity's fact."""
    from ..zoo.tasks import _NOUNS, AGREEMENT, FACTS, INDUCTION, RECALL

    _check_n(n)
    rng = random.Random(seed)
    out: list[Pair] = []
    if task == "induction":
        for ex in INDUCTION.examples(n, seed=seed):
            w = list(ex.words)
            w[ex.truth[1]] = rng.choice(sorted(set(INDUCTION.words) - set(ex.words)))
            out.append(Pair(ex.prompt, " ".join(w), " " + ex.answer, None, kind="logit"))
    elif task == "agreement":
        other = dict(_NOUNS)
        other.update({b: a for a, b in _NOUNS})
        for ex in AGREEMENT.examples(n, seed=seed):
            w = list(ex.words)
            w[ex.truth[0]] = other[w[ex.truth[0]]]
            out.append(Pair(ex.prompt, " ".join(w), " " + ex.answer, " " + ex.foil))
    elif task == "recall":
        ents = sorted(FACTS)
        for ex in RECALL.examples(n, seed=seed):
            w = list(ex.words)
            e = w[ex.truth[0]]
            e2 = rng.choice([x for x in ents if FACTS[x] != FACTS[e]])
            w[ex.truth[0]] = e2
            out.append(Pair(ex.prompt, " ".join(w), " " + ex.answer, " " + FACTS[e2]))
    else:
        raise InputError(f"Unknown zoo task {task!r}; choose one of ['agreement', 'induction', 'recall'].")
    return out


TASKS: dict[str, Callable[..., list[Pair]]] = {
    "ioi": ioi, "greater_than": greater_than, "agreement": agreement, "capital": capital,
}


def make(name: str, model: Any, n: int = 8, seed: int = 0) -> list[Pair]:
    if name not in TASKS:
        raise InputError(f"Unknown circuit task {name!r}; choose one of {sorted(TASKS)}.")
    return TASKS[name](model, n=n, seed=seed)


__all__ = ["Pair", "ioi", "agreement", "capital", "greater_than", "zoo_pairs", "load_pairs", "make", "TASKS"]
