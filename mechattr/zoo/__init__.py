"""The zoo: small trained transformers whose deciding input tokens are known.

``mechattr.load_model("zoo:agreement")`` (also ``zoo:induction``, ``zoo:recall`` and the
randomized-label twins ``zoo:TASK-random``) loads a 2-layer GPT-2 shipped with the package,
offline, as a TransformerBridge or (TL 3.x) HookedTransformer. :mod:`mechattr.zoo.tasks` generates
examples with their ground-truth positions; :func:`load_probe` and :func:`load_sae` give the
linear probe and ReLU SAE trained on each task's model. ``python -m mechattr.zoo.train TASK``
rebuilds everything (see docs/zoo.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import InputError, ModelError
from ..tl.loading import builtin, from_local_dir, set_cfg_field, set_model_name, unknown_name_hint
from .tasks import TASKS, Example, Task, get_task, token_positions

DATA = Path(__file__).resolve().parent / "data"


def model_dir(name: str) -> Path:
    """The shipped checkpoint directory of ``"agreement"``, ``"agreement-random"``, ... ."""
    name = name[4:] if name.startswith("zoo:") else name
    d = DATA / name
    if not (d / "config.json").is_file():
        raise ModelError(
            f"The zoo model {name!r} is not installed in {DATA}. Known: {sorted(zoo_models())}. "
            f"Rebuild it with: python -m mechattr.zoo.train {name.removesuffix('-random')}"
        )
    return d


def card(name: str) -> dict[str, Any]:
    """The model card (task, training settings, held-out accuracy) of a zoo model."""
    return json.loads((model_dir(name) / "card.json").read_text())


def shipped_tasks() -> list[str]:
    """Tasks whose trained model and randomized twin are installed (the others have generators
    and a training recipe but no shipped checkpoint yet)."""
    return [t for t in sorted(TASKS) if (DATA / t / "config.json").is_file() and (DATA / f"{t}-random" / "config.json").is_file()]


def zoo_models() -> list[str]:
    return sorted(p.name for p in DATA.iterdir() if (p / "card.json").is_file()) if DATA.is_dir() else []


def _loader(dirname: str):
    def load(kind: str, device: str, dtype: torch.dtype) -> Any:
        model = from_local_dir(model_dir(dirname), kind, device, dtype)
        # The zoo models were trained with BOS at position 0.
        set_cfg_field(model, "default_prepend_bos", True, required=True)
        set_model_name(model, f"zoo:{dirname}")
        return model

    return load


for _task in shipped_tasks():
    builtin(f"zoo:{_task}", f"2-layer GPT-2 trained on the zoo task {_task!r} (ground truth known)")(
        _loader(_task)
    )
    builtin(
        f"zoo:{_task}-random",
        f"randomized-label twin of zoo:{_task} (same architecture, shuffled answers)",
    )(_loader(f"{_task}-random"))


@unknown_name_hint("zoo:")
def _explain_unknown(name: str) -> None:
    """A zoo task that is known but not shipped: the zoo says how to train it."""
    if name[4:].removesuffix("-random") in TASKS:
        model_dir(name)  # raises the zoo's own message


# ----- probes and SAEs ------------------------------------------------------------------------
def _read(kind: str, task: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    t = get_task(task).name
    path = DATA / kind / f"{t}.safetensors"
    if not path.is_file():
        raise ModelError(f"No {kind[:-1]} shipped for task {t!r} ({path}); rebuild with python -m mechattr.zoo.train {t}")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["mechattr"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


@dataclass(frozen=True)
class LinearProbe:
    """A softmax probe read at ``hook`` on the token chosen by ``position`` ("last")."""

    W: Float[Tensor, "d_model n_classes"]
    b: Float[Tensor, " n_classes"]
    hook: str
    position: str
    classes: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def logits(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... n_classes"]:
        return resid @ self.W.to(resid) + self.b.to(resid)

    def predict(self, resid: Float[Tensor, "... d_model"]) -> Tensor:
        return self.logits(resid).argmax(-1)


@dataclass(frozen=True)
class SAE:
    """A plain ReLU sparse autoencoder on ``hook``: f = relu((x - b_dec) W_enc + b_enc),
    x_hat = f W_dec + b_dec."""

    W_enc: Float[Tensor, "d_in d_sae"]
    b_enc: Float[Tensor, " d_sae"]
    W_dec: Float[Tensor, "d_sae d_in"]
    b_dec: Float[Tensor, " d_in"]
    hook: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        return torch.relu((x - self.b_dec.to(x)) @ self.W_enc.to(x) + self.b_enc.to(x))

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return f @ self.W_dec.to(f) + self.b_dec.to(f)


def load_probe(task: str) -> LinearProbe:
    """The linear probe shipped for ``task`` (agreement: subject number; induction, recall: the
    answer word), read on the last token at ``probe.hook``."""
    t, m = _read("probes", task)
    return LinearProbe(t["W"], t["b"], m["hook"], m["position"], tuple(m["classes"]), m)


def load_sae(task: str) -> SAE:
    """The ReLU SAE shipped for ``task``'s model, trained on every token at ``sae.hook``."""
    t, m = _read("saes", task)
    return SAE(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], m["hook"], m)


def example_tokens(adapter: Any, ex: Example) -> tuple[Tensor, tuple[int, ...], tuple[int, ...]]:
    """Token ids of an example's prompt for ``adapter`` and its truth / distractor token positions;
    checks that the tokenizer keeps one token per word."""
    toks = adapter.tokenize(ex.prompt)
    bos = bool(adapter.prepend_bos)
    if toks.shape[-1] != len(ex.words) + int(bos):
        raise InputError(
            f"The model's tokenizer splits the task prompt {ex.prompt!r} into {toks.shape[-1]} tokens, "
            f"not one per word; use a zoo model of the same task."
        )
    return toks, token_positions(ex.truth, bos), token_positions(ex.distractors, bos)


__all__ = [
    "TASKS",
    "Task",
    "Example",
    "get_task",
    "token_positions",
    "example_tokens",
    "model_dir",
    "card",
    "zoo_models",
    "LinearProbe",
    "SAE",
    "load_probe",
    "load_sae",
]
