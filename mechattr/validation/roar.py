"""Check 7: ROAR-lite — RemOve And Retrain (Hooker et al. 2019) on a zoo task.

Removing tokens from a *trained* model's input moves it off its training distribution, so a drop
of the target may say more about the shift than about the tokens. ROAR retrains instead: for each
training and test example the top-k attributed tokens (by the method, on the validated model) are
replaced by ``<unk>``, a fresh model is trained from scratch on the masked training set and
evaluated on the equally masked test set. The same with k random tokens is the reference. A
method that finds the tokens carrying the answer makes the task harder than random masking does.

The full protocol of Hooker et al. (ROAR and KAR swept over 10-90 % of the tokens, each point
retrained several times) is ``roar_mode="sweep"`` (:mod:`.roar_sweep`); this lite version stays the
fast default.

"Lite": the zoo's own training (:func:`mechattr.zoo.train.train` with the task's
``TASK_CONFIGS`` entry) on a fixed set of a few hundred examples, narrower and shorter
(``ROAR_OVERRIDES``), so one retraining takes seconds on a CPU. Every retraining starts from the
same initialisation and sees the same batch order; only the masks differ. Accuracies are cached
under ``mechattr.tl.loading.cache_dir()/validation/roar`` keyed by everything that determines them
(task, training config, the exact masked data), so a cached number is the number a rerun gives.

Criterion: the method's accuracy drop exceeds the mean drop of ``n_random`` random maskings
(different random positions, same k) by more than the larger of two random-mask spreads: 2 std
over those seeds, and the binomial standard error of the random-mask test accuracy. A method no
better than random then passes only by luck well beyond the noise of the measurement.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator

import torch
from torch import Tensor

from ..api import resolve
from ..errors import InputError, ModelError
from ..progress import progress
from ._context import Item, MethodSpec, VContext
from ._result import CheckResult, Verdict
from .stats import nanmean, nanstd


@dataclass
class RoarConfig:
    """The data side of ROAR-lite; the training side is the zoo's ``TrainConfig``."""

    n_train: int = 256
    n_test: int = 128
    n_random: int = 3  # random-mask retrainings (the reference's mean and spread)
    data_seed: int = 0


def _zoo() -> tuple[Any, Any]:
    try:
        from ..zoo import tasks as zt
        from ..zoo import train as ztr
    except ImportError as e:
        raise ModelError(f"ROAR-lite needs the zoo (mechattr.zoo.tasks and mechattr.zoo.train): {e}") from e
    for name in ("train", "encode", "TrainConfig", "TASK_CONFIGS", "ROAR_OVERRIDES", "answer_logits", "UNK"):
        if not hasattr(ztr, name):
            raise ModelError(f"ROAR-lite needs mechattr.zoo.train.{name}, which this version lacks.")
    return zt, ztr


def configs(task_name: str, options: dict[str, Any] | None, seed: int) -> tuple[RoarConfig, Any, bool]:
    """(data config, zoo TrainConfig, use cache) from ``roar_config``: its keys are RoarConfig
    fields, zoo TrainConfig fields (override the zoo's task config and ROAR_OVERRIDES) or
    ``cache``."""
    _, ztr = _zoo()
    over = dict(options or {})
    cache = bool(over.pop("cache", True))
    rc_fields = {f.name for f in fields(RoarConfig)}
    tc_fields = {f.name for f in fields(ztr.TrainConfig)} - {"seed"}
    unknown = set(over) - rc_fields - tc_fields
    if unknown:
        raise InputError(
            f"roar_config has unknown keys {sorted(unknown)}; it takes {sorted(rc_fields)}, 'cache' and the "
            f"zoo training fields {sorted(tc_fields)}."
        )
    rc = RoarConfig(**{k: v for k, v in over.items() if k in rc_fields})
    if rc.n_random < 2:
        raise InputError(f"roar_config n_random must be >= 2 (a spread needs two), got {rc.n_random}.")
    train_over = {k: v for k, v in over.items() if k in tc_fields}
    tc = ztr.TrainConfig(
        **{**ztr.TASK_CONFIGS.get(task_name, {}), **ztr.ROAR_OVERRIDES, **train_over, "seed": int(seed)}
    )
    return rc, tc, cache


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny matrices: extra threads only add contention (7x slower on a loaded 2-core machine).
    The caller's thread count is restored (zoo training sets it to 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def task_name(vc: VContext) -> str:
    t = vc.options["roar_task"]
    if t is not None:
        return str(t)
    name = str(vc.adapter.name or "")
    if name.startswith("zoo:"):
        return name[4:].removesuffix("-random")
    raise ModelError(
        "ROAR-lite retrains a model on a zoo task; the validated model is not a zoo model. "
        "Validate mechattr.load_model('zoo:TASK') or pass roar_task='agreement' with a model "
        "that speaks the task's vocabulary."
    )


def mask_tokens(toks: Tensor, positions: list[list[int]], unk: int) -> Tensor:
    """Replace ``positions[i]`` of row ``i`` by the unknown token (a copy)."""
    out = toks.clone()
    for i, ps in enumerate(positions):
        if ps:
            out[i, torch.tensor(ps, dtype=torch.long)] = unk
    return out


def top_k_positions(scores: Tensor, free: Tensor, k: int) -> list[int]:
    """The k free positions with the highest signed score (ties: earlier position)."""
    cand = torch.nonzero(free)[:, 0].tolist()
    return sorted(sorted(cand, key=lambda p: (-float(scores[p]), p))[:k])


def random_positions(free: Tensor, k: int, rng: random.Random) -> list[int]:
    cand = torch.nonzero(free)[:, 0].tolist()
    return sorted(rng.sample(cand, min(k, len(cand))))


def train_and_score(task: Any, tc: Any, train: tuple[Tensor, Tensor, Tensor], test: tuple[Tensor, Tensor, Tensor]) -> float:
    """Train a zoo model from scratch on the encoded ``train`` set (the zoo's training loop and
    config) and return its accuracy on ``test``."""
    _, ztr = _zoo()
    model, _ = ztr.train(task, tc, data=train)
    with torch.no_grad():
        pred = ztr.answer_logits(model, test[0], test[1]).argmax(-1)
    return float((pred == test[2]).float().mean())


def _cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_accuracy(task: Any, tc: Any, train: tuple, test: tuple, cache: bool = True) -> tuple[float, bool]:
    """(accuracy, came from the cache)."""
    from ..tl.loading import cache_dir

    h = hashlib.sha256()
    for t in (*train, *test):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.cpu().numpy().tobytes())
    key = _cache_key({"task": task.name, "cfg": asdict(tc), "data": h.hexdigest(), "v": 2})
    path = cache_dir() / "validation" / "roar" / f"{key}.json"
    if cache and path.exists():
        try:
            return float(json.loads(path.read_text())["accuracy"]), True
        except (ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    acc = train_and_score(task, tc, train, test)
    if cache:
        from .._io import atomic_write

        atomic_write(path, json.dumps({"accuracy": acc, "task": task.name, "cfg": asdict(tc)}).encode())
    return acc, False


def _method_positions(vc: VContext, m: MethodSpec, items: list[tuple[Item, int]], k: int, quiet: bool) -> list[list[int]]:
    """Top-k positions of every example under ``m``; repeated prompts are attributed once."""
    memo: dict[str, list[int]] = {}
    out = []
    for it, _ in progress(items, desc=f"ROAR: attributing with {m.label}", total=len(items), quiet=quiet):
        key = str(it.prompt)
        if key not in memo:
            s = vc.attribute(vc.adapter, it, m).token_scores(0)
            memo[key] = top_k_positions(s, it.free, k)
        out.append(memo[key])
    return out


def run(vc: VContext) -> CheckResult:
    """ROAR-lite. ``roar_mode="sweep"`` is dispatched by :func:`mechattr.validation.roar_sweep.run`
    (the check registered as ``roar``), which builds on this module."""
    mode = vc.options.get("roar_mode", "lite")
    if mode != "lite":
        raise InputError(f"roar_mode is 'lite' (the fast default) or 'sweep' (ROAR and KAR over fractions), got {mode!r}.")
    with _one_thread():
        return _run(vc)


def encoded_items(vc: VContext, task: Any, rc: RoarConfig, tc: Any) -> tuple[Tensor, Tensor, Tensor, list, int]:
    """The ROAR data set encoded for training (tokens, last positions, answers), its examples as
    validation items paired with their offset into the encoded rows, and the number of training
    examples (the first rows; the rest is the test set)."""
    _, ztr = _zoo()
    train_ex = task.examples(rc.n_train, seed=60_000 + rc.data_seed)
    test_ex = task.examples(rc.n_test, seed=70_000 + rc.data_seed)
    examples = train_ex + test_ex
    toks, last, ans = ztr.encode(task, examples)
    if toks.shape[1] > tc.n_positions:
        raise InputError(f"zoo:{task.name} examples are {toks.shape[1]} tokens long; raise n_positions in roar_config.")
    items = []
    for i, ex in enumerate(examples):
        adapter, plan, prompt = resolve(vc.model, ex.prompt, ex.answer, prepend_bos=vc.adapter.prepend_bos)
        t = plan.tokens[0].cpu()
        off = 0 if adapter.prepend_bos else 1  # encode() always writes BOS at position 0
        if not torch.equal(t, toks[i, off : off + t.shape[0]]):
            raise ModelError(
                f"The validated model tokenizes zoo example {ex.prompt!r} differently from the task "
                f"vocabulary; ROAR-lite needs a model trained on zoo:{task.name}."
            )
        fixed = torch.zeros(t.shape[0], dtype=torch.bool)
        if adapter.prepend_bos:
            fixed[0] = True
        items.append((Item(i, prompt, plan, fixed), off))
    return toks, last, ans, items, len(train_ex)


def _run(vc: VContext) -> CheckResult:
    res = CheckResult("roar")
    zt, ztr = _zoo()
    task = zt.get_task(task_name(vc))
    rc, tc, cache = configs(task.name, vc.options["roar_config"], vc.seed)
    quiet = bool(getattr(vc, "quiet", False))
    k = int(vc.options["roar_k"])
    toks, last, ans, items, n_tr = encoded_items(vc, task, rc, tc)

    def split(masked: Tensor) -> tuple[tuple, tuple]:
        return (masked[:n_tr], last[:n_tr], ans[:n_tr]), (masked[n_tr:], last[n_tr:], ans[n_tr:])

    # Every masking to retrain with: none, n_random random ones, one per method.
    maskings: list[tuple[str, Tensor]] = [("none", toks)]
    for r in range(rc.n_random):
        rng = random.Random(f"roar:{vc.seed}:{r}")
        pos = [random_positions(it.free, k, rng) for it, _ in items]
        maskings.append((f"random {r}", mask_tokens(toks, _shift(pos, items), ztr.UNK)))
    for m in vc.methods:
        pos = _method_positions(vc, m, items, k, quiet)
        maskings.append((m.label, mask_tokens(toks, _shift(pos, items), ztr.UNK)))
    acc: dict[str, float] = {}
    table = []
    for label, masked in progress(maskings, desc=f"ROAR: retraining on zoo:{task.name}", quiet=quiet):
        a, hit = cached_accuracy(task, tc, *split(masked), cache)
        acc[label] = a
        table.append({"masking": label, "k": 0 if label == "none" else k, "accuracy": a, "cached": hit})
    base = acc["none"]
    for row in table:
        row["drop"] = base - row["accuracy"]
        res.add(row["masking"], "accuracy", row["accuracy"])
        if row["masking"] != "none":
            res.add(row["masking"], "drop", row["drop"])
    rand_drops = [base - acc[f"random {r}"] for r in range(rc.n_random)]
    mu, sd = nanmean(rand_drops), nanstd(rand_drops)
    rand_acc = base - mu
    se = math.sqrt(max(rand_acc * (1 - rand_acc), 0.0) / rc.n_test)
    spread = max(2 * sd, se)
    thr = mu + spread
    res.add("random", "drop", mu)
    res.add("random ± std", "drop", sd)
    for m in vc.methods:
        drop = base - acc[m.label]
        res.verdicts[m.label] = Verdict(
            drop, bool(drop > thr), thr,
            "accuracy drop after retraining with the top-k tokens masked > mean random-mask drop "
            "+ max(2 std over random maskings, binomial s.e.)",
            f"task {task.name}, k={k}, unmasked accuracy {base:.3f}, random-mask drop {mu:.3f} ± {sd:.3f} "
            f"({rc.n_random} maskings), s.e. {se:.3f}",
        )
    res.notes.append(
        f"task zoo:{task.name}; {rc.n_train} train / {rc.n_test} test examples; k={k}; "
        f"training {({f: getattr(tc, f) for f in ('n_layer', 'n_embd', 'steps', 'lr', 'seed')})}"
    )
    res.data["table"] = table
    res.data["random_drop"] = {"mean": mu, "std": sd, "se": se, "threshold": thr}
    return res


def _shift(positions: list[list[int]], items: list[tuple[Item, int]]) -> list[list[int]]:
    """Model token positions -> positions in the encode() rows (which always start with BOS)."""
    return [[p + off for p in ps] for ps, (_, off) in zip(positions, items)]
