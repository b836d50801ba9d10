"""Train the zoo: ``python -m mechattr.zoo.train TASK [--seed 0] [--out DIR]``.

For one task this writes, under ``DIR`` (default: the package's ``zoo/data``):
- ``TASK/``: a 2-layer GPT-2 (HF checkpoint, word-level tokenizer, ``card.json`` with held-out
  accuracy) trained on fresh examples with the loss on the answer token only;
- ``TASK-random/``: the same architecture trained on a fixed set whose answers were shuffled
  across examples (the data-randomization twin of Adebayo et al. 2018);
- ``probes/TASK.safetensors``: a linear (softmax) probe on one hook's residual stream;
- ``saes/TASK.safetensors``: a plain ReLU sparse autoencoder on one hook (Bricken et al. 2023).

Everything is deterministic given the seed (seeded ``random.Random`` for data, a forked torch RNG
for weights; dropout is off).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .tasks import SPECIAL, Example, Task, get_task

DATA = Path(__file__).resolve().parent / "data"
BOS, PAD, UNK = 0, 1, 2


@dataclass
class TrainConfig:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_inner: int = 128
    n_positions: int = 32
    steps: int = 1500
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    eval_every: int = 100
    # Stop once the validation accuracy (on examples from a seed never used for the test) is this high.
    target_val: float = 0.996
    min_steps: int = 300
    twin_examples: int = 2000
    seed: int = 0


# Per-task settings that differ from the defaults (found by hand; see docs/zoo.md).
TASK_CONFIGS: dict[str, dict[str, Any]] = {
    "agreement": {},
    "induction": {"steps": 8000, "lr": 5e-3},  # the induction heads form around step 4000
    "recall": {},
}
# ROAR-lite (mechattr.validation.roar) retrains a narrower model briefly, on top of the above.
ROAR_OVERRIDES: dict[str, Any] = {"n_embd": 32, "n_inner": 64, "steps": 150, "warmup": 20}
PROBE_HOOK = "blocks.1.hook_resid_post"
SAE_HOOK = "blocks.1.hook_resid_pre"
# The induction model's residual stream needs a stronger sparsity penalty for a sparse code.
SAE_L1: dict[str, float] = {"induction": 1.0}


# ----- tokenizer and model --------------------------------------------------------------------
def make_tokenizer(task: Task) -> Any:
    """A Hugging Face word-level tokenizer over the task vocabulary (split on whitespace)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=task.vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<bos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.model_max_length = 10**6
    return fast


def make_model(task: Task, cfg: TrainConfig) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2Config(
        vocab_size=len(task.vocab),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.n_inner,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS,
        eos_token_id=BOS,
        pad_token_id=PAD,
        attn_implementation="eager",
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return GPT2LMHeadModel(hf)


def encode(
    task: Task, examples: Sequence[Example]
) -> tuple[Int[Tensor, "n pos"], Int[Tensor, " n"], Int[Tensor, " n"]]:
    """(tokens with BOS, right-padded; index of each prompt's last token; answer ids).

    Right padding needs no attention mask: causal attention never lets the last real token see
    the pads after it."""
    vocab = task.vocab
    rows = [[BOS] + [vocab[w] for w in ex.words] for ex in examples]
    width = max(len(r) for r in rows)
    toks = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = torch.tensor(r)
    last = torch.tensor([len(r) - 1 for r in rows])
    ans = torch.tensor([vocab[ex.answer] for ex in examples])
    return toks, last, ans


def induction_chain(task: Task, rng: random.Random) -> tuple[Int[Tensor, " pos"], Int[Tensor, " pos"]]:
    """An induction training sequence with several supervised positions: a task example
    (x_0 .. x_{L-1} x_k -> x_{k+1}) continued by x_{k+1} .. x_{L-2}, each predicted from the
    repeat. Its prefix up to the first repeated token is exactly a task prompt; the extra
    positions only give more gradient signal per sequence (CPU time is scarce)."""
    ex = task.sample(rng)
    vocab = task.vocab
    seq = ex.words[:-1]
    k = ex.truth[1]
    m = len(seq) - k - 2  # repeat up to the end: as many supervised positions as possible
    words = seq + seq[k : k + m + 1]
    ids = [BOS] + [vocab[w] for w in words]
    tgt = [-100] * (len(seq) + 1) + [vocab[w] for w in seq[k + 1 : k + m + 2]]
    return torch.tensor(ids), torch.tensor(tgt)


def train_batch(task: Task, cfg: TrainConfig, rng: random.Random, fixed: Sequence[Example] | None) -> tuple[Tensor, Tensor]:
    """(tokens, targets) for one step; targets are -100 where there is no loss."""
    if fixed is None and task.name == "induction":
        pairs = [induction_chain(task, rng) for _ in range(cfg.batch)]
        width = max(len(t) for t, _ in pairs)
        toks = torch.full((len(pairs), width), PAD, dtype=torch.long)
        tgt = torch.full((len(pairs), width), -100, dtype=torch.long)
        for i, (t, y) in enumerate(pairs):
            toks[i, : len(t)] = t
            tgt[i, : len(y)] = y
        return toks, tgt
    if fixed is None:
        batch = [task.sample(rng) for _ in range(cfg.batch)]
    else:
        batch = [fixed[rng.randrange(len(fixed))] for _ in range(cfg.batch)]
    toks, last, ans = encode(task, batch)
    tgt = torch.full_like(toks, -100)
    tgt[torch.arange(len(batch)), last] = ans
    return toks, tgt


def answer_logits(model: Any, toks: Tensor, last: Tensor) -> Float[Tensor, "n vocab"]:
    logits = model(input_ids=toks).logits
    return logits[torch.arange(toks.shape[0]), last]


@torch.no_grad()
def accuracy(model: Any, task: Task, examples: Sequence[Example], batch: int = 512) -> float:
    """Fraction of examples whose argmax over the whole vocabulary is the answer."""
    model.eval()
    hits = 0
    for i in range(0, len(examples), batch):
        toks, last, ans = encode(task, examples[i : i + batch])
        hits += int((answer_logits(model, toks, last).argmax(-1) == ans).sum())
    return hits / len(examples)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def shuffled_twin_data(task: Task, cfg: TrainConfig) -> list[Example]:
    """A fixed training set whose answers are permuted across examples: inputs keep their
    distribution, the input -> answer relation is destroyed."""
    exs = task.examples(cfg.twin_examples, seed=10_000 + cfg.seed)
    answers = [e.answer for e in exs]
    random.Random(f"shuffle:{cfg.seed}").shuffle(answers)
    return [Example(e.prompt, a, e.truth, e.distractors, e.foil) for e, a in zip(exs, answers)]


def encoded_batch(data: tuple[Tensor, Tensor, Tensor], cfg: TrainConfig, rng: random.Random) -> tuple[Tensor, Tensor]:
    """(tokens, targets) for one step drawn from a fixed encoded set ``(tokens, last, answers)``
    as :func:`encode` returns it (ROAR-lite trains on masked copies of such a set)."""
    toks, last, ans = data
    idx = torch.tensor([rng.randrange(toks.shape[0]) for _ in range(cfg.batch)])
    tgt = torch.full((cfg.batch, toks.shape[1]), -100, dtype=torch.long)
    tgt[torch.arange(cfg.batch), last[idx]] = ans[idx]
    return toks[idx], tgt


def train(
    task: Task, cfg: TrainConfig, randomized: bool = False, log: bool = False,
    data: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train one model; returns it (eval mode) and a record of how training went.

    ``data``: train on this fixed encoded set (tokens, last, answers) instead of fresh examples,
    for exactly ``cfg.steps`` steps (no early stopping: its validation examples are unmasked)."""
    torch.set_num_threads(1)  # tiny matrices: more threads only add contention
    model = make_model(task, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    data_rng = random.Random(f"train:{task.name}:{cfg.seed}")
    fixed = shuffled_twin_data(task, cfg) if randomized else None
    val = task.examples(500, seed=5_000 + cfg.seed)
    t0 = time.perf_counter()
    history = []
    step = 0
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 1)
        for step in range(cfg.steps):
            model.train()
            if data is not None:
                toks, tgt = encoded_batch(data, cfg, data_rng)
            else:
                toks, tgt = train_batch(task, cfg, data_rng, fixed)
            logits = model(input_ids=toks).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100)
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if (step + 1) % cfg.eval_every == 0 and not randomized and data is None:
                acc = accuracy(model, task, val)
                history.append((step + 1, round(float(loss), 4), acc))
                if log:
                    print(f"  step {step + 1}: loss {float(loss):.4f} val acc {acc:.4f}", flush=True)
                if step + 1 >= cfg.min_steps and acc >= cfg.target_val:
                    break
    model.eval()
    info = {
        "steps": step + 1,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_loss": round(float(loss), 4),
        "history": history,
    }
    return model, info


# ----- probes and SAEs ------------------------------------------------------------------------
def hf_residual(model: Any, task: Task, examples: Sequence[Example], hook: str) -> tuple[Tensor, Tensor]:
    """Residual stream at ``blocks.L.hook_resid_pre`` / ``blocks.L.hook_resid_post`` of the HF
    model (all positions [n, pos, d]) and the last-token index per example."""
    layer = int(hook.split(".")[1])
    if hook.endswith("hook_resid_pre"):
        mod, use_input = model.transformer.h[layer], True
    elif hook.endswith("hook_resid_post"):
        mod, use_input = model.transformer.h[layer], False
    else:  # pragma: no cover - only the two rules above are used
        raise ValueError(hook)
    box: dict[str, Tensor] = {}

    def grab(m: Any, args: Any, kwargs: Any, out: Any = None) -> None:
        if use_input:
            box["x"] = args[0] if args else kwargs["hidden_states"]
        else:
            box["x"] = out[0] if isinstance(out, tuple) else out

    toks, last, _ = encode(task, examples)
    if use_input:
        h = mod.register_forward_pre_hook(lambda m, a, k: grab(m, a, k), with_kwargs=True)
    else:
        h = mod.register_forward_hook(lambda m, a, k, o: grab(m, a, k, o), with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=toks)
    finally:
        h.remove()
    return box["x"].detach(), last


def probe_labels(task: Task, examples: Sequence[Example]) -> tuple[Tensor, list[str]]:
    """What the probe reads: subject number for agreement, the answer word otherwise."""
    if task.name == "agreement":
        classes = ["singular", "plural"]
        return torch.tensor([int(e.answer == "are") for e in examples]), classes
    classes = list(task.answers)
    return torch.tensor([classes.index(e.answer) for e in examples]), classes


def train_probe(model: Any, task: Task, seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Multinomial logistic regression on the last token's residual stream at ``PROBE_HOOK``."""
    train_ex = task.examples(3000, seed=20_000 + seed)
    test_ex = task.examples(1000, seed=30_000 + seed)
    X, last = hf_residual(model, task, train_ex, PROBE_HOOK)
    x = X[torch.arange(len(train_ex)), last]
    y, classes = probe_labels(task, train_ex)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        W = torch.zeros(x.shape[1], len(classes), requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.Adam([W, b], lr=0.05)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(x @ W + b, y) + 1e-4 * W.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    Xt, lt = hf_residual(model, task, test_ex, PROBE_HOOK)
    yt, _ = probe_labels(task, test_ex)
    acc = float(((Xt[torch.arange(len(test_ex)), lt] @ W + b).argmax(-1) == yt).float().mean())
    meta = {"hook": PROBE_HOOK, "position": "last", "classes": classes, "heldout_accuracy": acc, "task": task.name}
    return {"W": W.detach().clone(), "b": b.detach().clone()}, meta


def train_sae(
    model: Any, task: Task, seed: int = 0, expansion: int = 4, l1: float = 3e-3, steps: int = 1500
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A ReLU SAE f = relu((x - b_dec) W_enc + b_enc), x_hat = f W_dec + b_dec, trained with
    MSE + l1 * sum|f| and unit-norm decoder rows (Bricken et al. 2023) on every non-pad position."""
    exs = task.examples(4000, seed=40_000 + seed)
    X, last = hf_residual(model, task, exs, SAE_HOOK)
    keep = torch.arange(X.shape[1])[None, :] <= last[:, None]
    acts = X[keep]
    test = acts[-2000:]
    acts = acts[:-2000]
    d_in = acts.shape[1]
    d_sae = expansion * d_in
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        W_dec = torch.randn(d_sae, d_in)
        W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).requires_grad_(True)
        W_enc = W_dec.detach().T.clone().requires_grad_(True)
        b_enc = torch.zeros(d_sae, requires_grad=True)
        b_dec = acts.mean(0).clone().requires_grad_(True)
        opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = acts[torch.randint(0, acts.shape[0], (512,), generator=g)]
            f = torch.relu((x - b_dec) @ W_enc + b_enc)
            loss = (f @ W_dec + b_dec - x).pow(2).sum(-1).mean() + l1 * f.abs().sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True)
    with torch.no_grad():
        f = torch.relu((test - b_dec) @ W_enc + b_enc)
        rec = f @ W_dec + b_dec
        fve = 1 - float((rec - test).pow(2).sum() / (test - test.mean(0)).pow(2).sum())
        l0 = float((f > 0).float().sum(-1).mean())
    tensors = {"W_enc": W_enc.detach().clone(), "b_enc": b_enc.detach().clone(),
               "W_dec": W_dec.detach().clone(), "b_dec": b_dec.detach().clone()}
    meta = {"hook": SAE_HOOK, "d_in": d_in, "d_sae": d_sae, "l1": l1, "steps": steps,
            "heldout_fraction_variance_explained": fve, "heldout_l0": l0, "task": task.name,
            "positions": "all prompt tokens (BOS included)"}
    return tensors, meta


# ----- saving ---------------------------------------------------------------------------------
def save_model(model: Any, task: Task, out: Path, card: dict[str, Any]) -> None:
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(str(out))
    make_tokenizer(task).save_pretrained(str(out))
    # TL 3.x reads GPT-2's n_ctx, which recent transformers no longer write.
    cfg = json.loads((out / "config.json").read_text())
    cfg["n_ctx"] = cfg["n_positions"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for junk in ("generation_config.json",):
        (out / junk).unlink(missing_ok=True)
    (out / "card.json").write_text(json.dumps(card, indent=2))


def save_tensors(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"mechattr": json.dumps(meta)})


def build(task_name: str, seed: int = 0, out: Path = DATA, log: bool = True, **overrides: Any) -> dict[str, Any]:
    """Train the model, its randomized twin, a probe and an SAE for one task and save them."""
    task = get_task(task_name)
    cfg = TrainConfig(seed=seed, **{**TASK_CONFIGS.get(task.name, {}), **overrides})
    heldout = task.examples(2000, seed=1_000_000 + seed)  # a seed no training stream uses
    summary: dict[str, Any] = {}
    for randomized in (False, True):
        name = task.name + ("-random" if randomized else "")
        if log:
            print(f"training zoo:{name}", flush=True)
        model, info = train(task, cfg, randomized=randomized, log=log)
        used = asdict(cfg)
        if not randomized:
            # The twin gets exactly as many steps as the real model needed (and its learning-rate
            # schedule spans those steps).
            cfg = replace(cfg, steps=info["steps"])
        acc = accuracy(model, task, heldout)
        card = {
            "name": f"zoo:{name}",
            "task": task.name,
            "description": task.description,
            "randomized_labels": randomized,
            "heldout_accuracy": acc,
            "heldout_n": len(heldout),
            "heldout_seed": 1_000_000 + seed,
            "chance": task.chance,
            "train_config": used,
            **info,
            "prepend_bos": True,
            "note": (
                "trained on a fixed set whose answers were shuffled across examples "
                "(data-randomization twin)" if randomized else
                "trained on fresh examples, cross-entropy on the answer token only"
                + (" (induction: also on the later tokens of a longer repeat)" if task.name == "induction" else "")
            ),
        }
        if randomized:
            card["train_accuracy"] = accuracy(model, task, shuffled_twin_data(task, cfg))
        save_model(model, task, out / name, card)
        summary[name] = {k: card[k] for k in ("heldout_accuracy", "steps", "train_seconds")}
        if log:
            print(f"  zoo:{name}: held-out accuracy {acc:.4f} ({info['train_seconds']} s)", flush=True)
        if not randomized:
            tensors, meta = train_probe(model, task, seed)
            save_tensors(out / "probes" / f"{task.name}.safetensors", tensors, meta)
            summary["probe"] = meta["heldout_accuracy"]
            tensors, meta = train_sae(model, task, seed, l1=SAE_L1.get(task.name, 3e-3))
            save_tensors(out / "saes" / f"{task.name}.safetensors", tensors, meta)
            summary["sae_fve"] = meta["heldout_fraction_variance_explained"]
            summary["sae_l0"] = meta["heldout_l0"]
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mechattr.zoo.train", description=__doc__.split("\n")[0])
    p.add_argument("task", choices=sorted(get_task.__globals__["TASKS"]))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DATA)
    p.add_argument("--steps", type=int, default=None, help="maximum training steps")
    a = p.parse_args(argv)
    over = {"steps": a.steps} if a.steps else {}
    print(json.dumps(build(a.task, a.seed, a.out, **over), indent=2))


if __name__ == "__main__":
    main()
