"""What every check shares: the resolved prompts, the methods to validate, options, and the
original attributions (computed once and reused by every check)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..tl.adapter import ModelAdapter
from ..api import call_method, fixed_positions, make_context, resolve, run_method
from ..attribution import Attribution
from ..errors import InputError, MethodError, suggest
from ..options import RUN_OPTIONS, TARGET_OPTIONS, defaults
from ..contract import MethodOutput
from ..registry import check_params, get_method
from ..targets import Plan


@dataclass
class Item:
    """One prompt resolved against the model and the target."""

    index: int
    prompt: str | None
    plan: Plan
    fixed: Tensor  # [pos] bool: positions that are never attributed nor removed (BOS)

    @property
    def free(self) -> Tensor:
        return ~self.fixed


@dataclass
class MethodSpec:
    """A method to validate: a registered name or a callable ``fn(ctx, **params) -> MethodOutput``."""

    label: str
    name: str | None
    fn: Callable[..., MethodOutput] | None
    params: dict[str, Any]
    promises: tuple[str, ...]


def method_specs(methods: Any, method_params: dict[str, dict[str, Any]] | None) -> list[MethodSpec]:
    if isinstance(methods, (str, tuple)) or callable(methods):
        methods = [methods]
    if not methods:
        raise InputError("Give at least one method to validate, e.g. methods=['ig', 'input_x_gradient'].")
    method_params = dict(method_params or {})
    specs: list[MethodSpec] = []
    for m in methods:
        params: dict[str, Any] = {}
        label = None
        if isinstance(m, tuple):
            if len(m) == 2 and isinstance(m[1], dict):
                m, params = m
            elif len(m) == 2 and isinstance(m[0], str) and (callable(m[1]) or isinstance(m[1], str)):
                label, m = m
            else:
                raise InputError(
                    "A method entry is a name, a callable, (name, params) or (label, callable); "
                    f"got a tuple of length {len(m)}."
                )
        if isinstance(m, str):
            info = get_method(m)
            label = label or info.name
            params = {**method_params.get(m, {}), **method_params.get(info.name, {}), **params}
            check_params(info, params)
            specs.append(MethodSpec(label, info.name, None, params, tuple(info.promises)))
        elif callable(m):
            label = label or getattr(m, "__name__", "callable")
            params = {**method_params.get(label, {}), **params}
            specs.append(MethodSpec(label, None, m, params, tuple(getattr(m, "promises", ()))))
        else:
            raise MethodError(f"A method is a registered name or a callable, got {type(m).__name__}.")
    labels = [s.label for s in specs]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise InputError(f"Methods {sorted(dup)} appear twice; give each a distinct label.")
    return specs


DEFAULT_OPTIONS: dict[str, Any] = {
    # check 1 / 2
    "threshold": 0.5,
    "top_k": 3,
    "randomization": ("cascading", "independent"),
    "randomization_stride": 1,
    "twin": None,
    # check 3
    "completeness_tol": 0.05,
    # check 4
    "replacement": "auto",
    "ks": (1, 3, 5, 0.1, 0.2),
    "n_random": 5,
    "counts": None,
    "margin": 1.0,
    # check 6
    "ablation_min_corr": 0.0,
    # check 8
    "ground_truth_n": 50,
    # check 7
    "roar_task": None,
    "roar_k": 1,
    "roar_config": None,
    "roar_method": None,
    "roar_mode": "lite",  # or "sweep": ROAR and KAR over roar_fractions, roar_repeats retrainings each
    "roar_fractions": (0.1, 0.3, 0.5, 0.7, 0.9),
    "roar_repeats": 3,
    # Jain & Wallace attention checks
    "attention_layers": None,
    "n_permutations": 20,
    "adversarial_epsilon": 0.01,
    "adversarial_steps": 60,
    "adversarial_lr": 0.1,
    # method running
    "method_params": None,
    # the shared run options (mechattr.options), except the seed, which validate() takes itself
    **defaults(tuple(n for n in RUN_OPTIONS if n != "seed")),
}


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    for k in options:
        if k not in DEFAULT_OPTIONS:
            raise InputError(
                f"validate() has no option {k!r}.{suggest(k, list(DEFAULT_OPTIONS))} "
                f"Options: {sorted(DEFAULT_OPTIONS)}."
            )
    opts = {**DEFAULT_OPTIONS, **options}
    if not (isinstance(opts["threshold"], (int, float)) and -1 <= opts["threshold"] <= 1):
        raise InputError(f"threshold is a correlation in [-1, 1], got {opts['threshold']!r}.")
    if isinstance(opts["top_k"], bool) or not isinstance(opts["top_k"], int) or opts["top_k"] < 1:
        raise InputError(f"top_k must be a positive integer, got {opts['top_k']!r}.")
    if isinstance(opts["n_random"], bool) or not isinstance(opts["n_random"], int) or opts["n_random"] < 2:
        raise InputError(f"n_random must be an integer >= 2 (a std needs two), got {opts['n_random']!r}.")
    for k in opts["ks"]:
        if isinstance(k, bool) or not (
            (isinstance(k, int) and k >= 1) or (isinstance(k, float) and 0 < k <= 1)
        ):
            raise InputError(f"ks holds token counts (int >= 1) or fractions in (0, 1]; got {k!r}.")
    modes = opts["randomization"]
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    for m in modes:
        if m not in ("cascading", "independent"):
            raise InputError(f"randomization modes are 'cascading' and 'independent', got {m!r}.")
    opts["randomization"] = modes
    return opts


@dataclass
class VContext:
    model: Any
    adapter: ModelAdapter
    items: list[Item]
    methods: list[MethodSpec]
    seed: int
    options: dict[str, Any]
    target: Any = None
    quiet: bool = False  # no progress bars
    _orig: dict[tuple[str, int], Attribution] = field(default_factory=dict)

    def attribute(self, adapter: ModelAdapter, item: Item, m: MethodSpec) -> Attribution:
        o = self.options
        if m.fn is None:
            return run_method(
                adapter, item.plan, m.name, dict(m.params), attribute_bos=o["attribute_bos"],
                memory_mb=o["memory_mb"], batch_size=o["batch_size"], seed=self.seed, prompt=item.prompt,
                quiet=self.quiet,
            )
        ctx = make_context(
            adapter, item.plan, attribute_bos=o["attribute_bos"], memory_mb=o["memory_mb"],
            batch_size=o["batch_size"], seed=self.seed, quiet=self.quiet,
        )
        return call_method(ctx, m.fn, m.params, m.label, attribute_bos=o["attribute_bos"], prompt=item.prompt)

    def original(self, item: Item, m: MethodSpec) -> Attribution:
        key = (m.label, item.index)
        if key not in self._orig:
            self._orig[key] = self.attribute(self.adapter, item, m)
        return self._orig[key]

    def scores(self, item: Item, m: MethodSpec, adapter: ModelAdapter | None = None) -> Tensor:
        """[rows, pos] token scores (final layer, heads summed) on ``adapter`` (default: the user's)."""
        res = self.original(item, m) if adapter is None else self.attribute(adapter, item, m)
        return token_matrix(res)


def token_matrix(res: Attribution) -> Tensor:
    return torch.stack([res.token_scores(r).double() for r in range(len(res.targets))])


def resolve_items(model: Any, prompts: Sequence[Any], target: Any, opts: dict[str, Any]) -> tuple[ModelAdapter, list[Item]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise InputError("Give at least one prompt to validate on.")
    items = []
    adapter = None
    for i, p in enumerate(prompts):
        adapter, plan, prompt = resolve(model, p, target, **{k: opts[k] for k in TARGET_OPTIONS})
        fixed = fixed_positions(adapter, plan.tokens, opts["attribute_bos"])
        if int((~fixed).sum()) < 2:
            raise InputError(f"Prompt {i} ({p!r}) has fewer than 2 attributable tokens; rank checks need more.")
        items.append(Item(i, prompt, plan, fixed))
    assert adapter is not None
    return adapter, items
