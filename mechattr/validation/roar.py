"""Check 7: ROAR-lite — RemOve And Retrain (Hooker et al. 2019) on a zoo task.

Removing tokens from a *trained* model's input moves it off its training distribution, so a drop
of the target may say more about the shift than about the tokens. ROAR retrains instead: for each
training and test example the top-k attributed tokens (by the method, on the validated model) are
replaced by ``<unk>``, a fresh model is trained from scratch on the masked training set and
evaluated on the equally masked test set. The same with k random tokens is the reference. A
method that finds the tokens carrying the answer makes the task harder than random masking does.

"Lite": a small model (zoo architecture, narrower), a fixed training set of a few hundred
examples and a couple of hundred steps, so one retraining takes seconds on a CPU. Accuracies are
cached under ``mechattr.loading.cache_dir()/validation/roar`` keyed by everything that determines
them (task, config, seed, and the exact masks), so a cached number is the number a rerun gives.

Criterion: accuracy drop with the method's masks > accuracy drop with random masks.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..api import resolve
from ..errors import InputError, ModelError
from ._context import Item, MethodSpec, VContext
from ._result import CheckResult, Verdict


@dataclass
class RoarConfig:
    n_train: int = 512
    n_test: int = 256
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 32
    steps: int = 200
    batch: int = 64
    lr: float = 3e-3
    data_seed: int = 0


def _zoo() -> tuple[Any, Any]:
    try:
        from ..zoo import tasks as zt
        from ..zoo import train as ztr
    except ImportError as e:
        raise ModelError(f"ROAR-lite needs the zoo (mechattr.zoo.tasks and mechattr.zoo.train): {e}") from e
    for name in ("make_model", "encode", "TrainConfig", "answer_logits", "UNK"):
        if not hasattr(ztr, name):
            raise ModelError(f"ROAR-lite needs mechattr.zoo.train.{name}, which this version lacks.")
    return zt, ztr


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


def train_and_score(task: Any, cfg: RoarConfig, train: tuple[Tensor, Tensor, Tensor], test: tuple[Tensor, Tensor, Tensor], seed: int) -> float:
    """Train the lite model from scratch on ``train`` and return its accuracy on ``test``."""
    _, ztr = _zoo()
    tc = ztr.TrainConfig(
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
        n_positions=max(int(train[0].shape[1]), int(test[0].shape[1]), 8), seed=seed,
    )
    model = ztr.make_model(task, tc)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    toks, last, ans = train
    g = torch.Generator().manual_seed(seed + 17)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        model.train()
        for _ in range(cfg.steps):
            idx = torch.randint(0, toks.shape[0], (cfg.batch,), generator=g)
            loss = torch.nn.functional.cross_entropy(ztr.answer_logits(model, toks[idx], last[idx]), ans[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = ztr.answer_logits(model, test[0], test[1]).argmax(-1)
    return float((pred == test[2]).float().mean())


def _cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_accuracy(task: Any, cfg: RoarConfig, train: tuple, test: tuple, seed: int, cache: bool = True) -> tuple[float, bool]:
    from ..loading import cache_dir

    h = hashlib.sha256()
    for t in (*train, *test):
        h.update(t.cpu().numpy().tobytes())
    key = _cache_key({"task": task.name, "cfg": asdict(cfg), "seed": seed, "data": h.hexdigest(), "v": 1})
    path = cache_dir() / "validation" / "roar" / f"{key}.json"
    if cache and path.exists():
        try:
            return float(json.loads(path.read_text())["accuracy"]), True
        except (ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    acc = train_and_score(task, cfg, train, test, seed)
    if cache:
        from ..attribution import _atomic_write

        _atomic_write(path, json.dumps({"accuracy": acc, "task": task.name, "cfg": asdict(cfg), "seed": seed}).encode())
    return acc, False


def run(vc: VContext) -> CheckResult:
    res = CheckResult("roar")
    zt, ztr = _zoo()
    task = zt.get_task(task_name(vc))
    over = dict(vc.options["roar_config"] or {})
    cache = bool(over.pop("cache", True))
    try:
        cfg = RoarConfig(**over)
    except TypeError as e:
        raise InputError(f"roar_config has an unknown field ({e}); fields: {list(asdict(RoarConfig()))}.") from e
    k = int(vc.options["roar_k"])
    train_ex = task.examples(cfg.n_train, seed=60_000 + cfg.data_seed)
    test_ex = task.examples(cfg.n_test, seed=70_000 + cfg.data_seed)
    examples = train_ex + test_ex
    toks, last, ans = ztr.encode(task, examples)
    # Attribute every example with every method on the validated model.
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
    n_tr = len(train_ex)

    def split(masked: Tensor) -> tuple[tuple, tuple]:
        return (masked[:n_tr], last[:n_tr], ans[:n_tr]), (masked[n_tr:], last[n_tr:], ans[n_tr:])

    seed = vc.seed
    base_acc, hit0 = cached_accuracy(task, cfg, *split(toks), seed, cache)
    rng = random.Random(f"roar:{seed}")
    rand_pos = [random_positions(it.free, k, rng) for it, _ in items]
    rand_acc, hit1 = cached_accuracy(task, cfg, *split(mask_tokens(toks, _shift(rand_pos, items), ztr.UNK)), seed, cache)
    table = [
        {"masking": "none", "k": 0, "accuracy": base_acc, "drop": 0.0, "cached": hit0},
        {"masking": "random", "k": k, "accuracy": rand_acc, "drop": base_acc - rand_acc, "cached": hit1},
    ]
    res.add("none", "accuracy", base_acc)
    res.add("random", "accuracy", rand_acc)
    res.add("random", "drop", base_acc - rand_acc)
    for m in vc.methods:
        pos = []
        for it, off in items:
            s = vc.attribute(vc.adapter, it, m).token_scores(0)
            pos.append(top_k_positions(s, it.free, k))
        acc, hit = cached_accuracy(task, cfg, *split(mask_tokens(toks, _shift(pos, items), ztr.UNK)), seed, cache)
        drop = base_acc - acc
        table.append({"masking": m.label, "k": k, "accuracy": acc, "drop": drop, "cached": hit})
        res.add(m.label, "accuracy", acc)
        res.add(m.label, "drop", drop)
        res.verdicts[m.label] = Verdict(
            drop, bool(drop > base_acc - rand_acc), base_acc - rand_acc,
            "accuracy drop after retraining with top-k masked > drop with k random tokens masked",
            f"task {task.name}, k={k}, unmasked accuracy {base_acc:.3f}, random-mask accuracy {rand_acc:.3f}",
        )
    res.notes.append(f"task zoo:{task.name}; config {asdict(cfg)}; k={k}")
    res.data["table"] = table
    return res


def _shift(positions: list[list[int]], items: list[tuple[Item, int]]) -> list[list[int]]:
    """Model token positions -> positions in the encode() rows (which always start with BOS)."""
    return [[p + off for p in ps] for ps, (_, off) in zip(positions, items)]
