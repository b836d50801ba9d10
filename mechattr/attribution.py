"""The one result type. Immutable; every view (tables, displays, files) derives from it."""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ._io import atomic_write
from .errors import InputError, ResultFileError

_atomic_write = atomic_write  # the older private name (kept for code written against it)

FORMAT_NAME = "mechattr-attribution"
FORMAT_VERSION = 1


def _jsonable(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


@dataclass(frozen=True)
class Attribution:
    """Attribution scores of one prompt.

    ``scores`` has the named axes ``dims``; always ``target`` and ``src`` (source token), in that
    order at the end, optionally preceded by ``layer`` / ``head`` / ``feature``. Scores are signed
    unless ``params['reduce']`` names a norm.
    """

    tokens: list[str]
    token_ids: list[int]
    targets: list[str]
    target_positions: list[int]
    scores: Tensor
    dims: tuple[str, ...] = ("target", "src")
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    model_name: str = ""
    target_description: str = ""
    target_token_ids: list[int | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.scores.dim() != len(self.dims):
            raise ValueError(f"scores has {self.scores.dim()} axes but dims names {len(self.dims)}")
        if self.dims[-2:] != ("target", "src"):
            raise ValueError("the last two axes must be ('target', 'src')")
        if self.scores.shape[-1] != len(self.tokens) or self.scores.shape[-2] != len(self.targets):
            raise ValueError("scores shape does not match tokens/targets")

    # ----- small accessors -----------------------------------------------------------------------
    def __repr__(self) -> str:
        shape = "×".join(f"{d}={n}" for d, n in zip(self.dims, self.scores.shape))
        return (
            f"Attribution(method={self.method!r}, targets={self.targets!r}, "
            f"tokens={len(self.tokens)}, scores[{shape}])"
        )

    @property
    def is_signed(self) -> bool:
        return self.params.get("reduce", "sum") == "sum"

    def _target_index(self, target: int | str) -> int:
        if isinstance(target, str):
            if target not in self.targets:
                raise InputError(f"No target {target!r}; targets are {self.targets}.")
            return self.targets.index(target)
        if not -len(self.targets) <= target < len(self.targets):
            raise InputError(f"Target index {target} out of range ({len(self.targets)} targets).")
        return target % len(self.targets)

    def final(self) -> "Attribution":
        """For a layered result, the last layer; otherwise the result itself."""
        if "layer" in self.dims:
            return self.at_layer(-1)
        return self

    def at_layer(self, layer: int) -> "Attribution":
        """The slice of a layered result at ``layer`` (negative counts from the end)."""
        if "layer" not in self.dims:
            raise InputError(f"This {self.method!r} result has no layer axis (dims {self.dims}).")
        ax = self.dims.index("layer")
        n = self.scores.shape[ax]
        if not -n <= layer < n:
            raise InputError(f"Layer {layer} out of range; this result has {n} layers.")
        dims = tuple(d for d in self.dims if d != "layer")
        params = {**self.params, "layer": layer % n}
        return replace(self, scores=self.scores.select(ax, layer % n), dims=dims, params=params)

    def token_scores(self, target: int | str = 0) -> Tensor:
        """``[src]`` scores for one target (the final layer, heads summed, for richer results)."""
        res = self.final()
        s = res.scores
        for d in res.dims[:-2]:  # head / feature axes
            s = s.sum(0)
        return s[res._target_index(target)]

    def top_k(self, k: int = 5, target: int | str = 0, by: str = "value") -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring source tokens as (position, token, score); ``by='abs'``
        ranks by magnitude."""
        s = self.token_scores(target)
        key = s.abs() if by == "abs" else s
        if by not in ("value", "abs"):
            raise InputError("top_k(by=...) is 'value' or 'abs'.")
        k = max(0, min(int(k), s.numel()))
        idx = torch.topk(key, k).indices.tolist()
        return [(i, self.tokens[i], float(s[i])) for i in idx]

    # ----- aggregation ---------------------------------------------------------------------------
    def word_spans(self) -> list[tuple[int, int]]:
        """Spans [start, end) grouping sub-word tokens into words: a new word starts at a token
        that begins with whitespace, at a special token, or after one."""
        spans: list[tuple[int, int]] = []
        special = {i for i, t in enumerate(self.tokens) if t.startswith("<") and t.endswith(">")}
        for i, tok in enumerate(self.tokens):
            starts = (
                not spans
                or i in special
                or (i - 1) in special
                or tok[:1].isspace()
                or (tok[:1] and not tok[:1].isalnum() and tok[:1] not in "'’-")
                or (self.tokens[i - 1][-1:] and not self.tokens[i - 1][-1:].isalnum())
            )
            if starts:
                spans.append((i, i + 1))
            else:
                spans[-1] = (spans[-1][0], i + 1)
        return spans

    def aggregate(
        self, spans: Sequence[tuple[int, int]] | str = "words", how: str = "sum"
    ) -> "Attribution":
        """Merge source tokens into spans. ``how='sum'`` keeps completeness (the total is
        unchanged); ``'mean'``, ``'max'`` and ``'absmax'`` do not, and the result says so."""
        if isinstance(spans, str):
            if spans != "words":
                raise InputError("aggregate(spans=...) takes 'words' or a list of (start, end) spans.")
            spans = self.word_spans()
        spans = [(int(a), int(b)) for a, b in spans]
        covered: list[int] = []
        for a, b in spans:
            if not 0 <= a < b <= len(self.tokens):
                raise InputError(f"Span ({a}, {b}) is not inside 0..{len(self.tokens)} or is empty.")
            covered.extend(range(a, b))
        if len(set(covered)) != len(covered):
            raise InputError("Spans overlap; give disjoint spans.")
        # Tokens not in any span stay as their own spans, so nothing silently disappears.
        rest = [(i, i + 1) for i in range(len(self.tokens)) if i not in set(covered)]
        spans = sorted(spans + rest)
        parts = []
        for a, b in spans:
            chunk = self.scores[..., a:b]
            if how == "sum":
                parts.append(chunk.sum(-1))
            elif how == "mean":
                parts.append(chunk.mean(-1))
            elif how == "max":
                parts.append(chunk.max(-1).values)
            elif how == "absmax":
                idx = chunk.abs().argmax(-1, keepdim=True)
                parts.append(chunk.gather(-1, idx).squeeze(-1))
            else:
                raise InputError("aggregate(how=...) is 'sum', 'mean', 'max' or 'absmax'.")
        tokens = ["".join(self.tokens[a:b]) for a, b in spans]
        ids = [self.token_ids[a] for a, _ in spans]
        # A target position maps to the span that contains it.
        pos_map = {i: j for j, (a, b) in enumerate(spans) for i in range(a, b)}
        params = {**self.params, "aggregation": {"how": how, "spans": spans}}
        diag = {**self.diagnostics, "completeness_preserved_by_aggregation": how == "sum"}
        return replace(
            self,
            tokens=tokens,
            token_ids=ids,
            scores=torch.stack(parts, dim=-1),
            target_positions=[pos_map.get(p, p) for p in self.target_positions],
            params=params,
            diagnostics=diag,
        )

    # ----- tables --------------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        recs = []
        flat = self.scores.reshape(-1).tolist()
        for idx, v in zip(itertools.product(*(range(n) for n in self.scores.shape)), flat):
            r = {d: i for d, i in zip(self.dims, idx)}
            r["target_label"] = self.targets[r["target"]]
            r["token"] = self.tokens[r["src"]]
            r["score"] = v
            recs.append(r)
        return recs

    def to_dataframe(self) -> Any:
        """Long-format pandas DataFrame: one row per (layer/head, target, src)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe needs pandas: pip install pandas") from e
        return pd.DataFrame.from_records(self.to_records())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "model_name": self.model_name,
            "prompt": self.prompt,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "targets": self.targets,
            "target_positions": self.target_positions,
            "target_token_ids": self.target_token_ids,
            "target_description": self.target_description,
            "dims": list(self.dims),
            "shape": list(self.scores.shape),
            "scores": self.scores.tolist(),
            "params": _jsonable(self.params),
            "diagnostics": _jsonable(self.diagnostics),
        }

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            atomic_write(Path(path), text.encode("utf-8"))
        return text

    # ----- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write scores as safetensors with the rest as JSON metadata (no pickle). The file is
        written to a temporary name and renamed, so a failed save never leaves a broken file."""
        from safetensors.torch import save

        meta = self.to_dict()
        meta.pop("scores")
        blob = save(
            {"scores": self.scores.detach().cpu().contiguous()},
            metadata={"mechattr": json.dumps(meta)},
        )
        p = Path(path)
        atomic_write(p, blob)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Attribution":
        from safetensors import safe_open

        p = Path(path)
        if not p.exists():
            raise ResultFileError(f"No result file at {str(p)!r}.")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta_raw = (f.metadata() or {}).get("mechattr")
                scores = f.get_tensor("scores") if meta_raw is not None else None
        except Exception as e:
            raise ResultFileError(
                f"{str(p)!r} is not a readable mechattr result (truncated or not a safetensors file: {e}). "
                "Re-run the attribution and save it again."
            ) from e
        if meta_raw is None:
            raise ResultFileError(f"{str(p)!r} is a safetensors file but not a mechattr result.")
        try:
            meta = json.loads(meta_raw)
        except json.JSONDecodeError as e:
            raise ResultFileError(f"{str(p)!r} has corrupted mechattr metadata.") from e
        if meta.get("format") != FORMAT_NAME:
            raise ResultFileError(f"{str(p)!r} is not a mechattr attribution file.")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ResultFileError(
                f"{str(p)!r} was written by format version {meta.get('format_version')}; this mechattr "
                f"reads version {FORMAT_VERSION}. Upgrade mechattr or re-run the attribution."
            )
        if list(scores.shape) != meta["shape"]:
            raise ResultFileError(f"{str(p)!r}: scores shape does not match its metadata.")
        return cls(
            tokens=meta["tokens"],
            token_ids=meta["token_ids"],
            targets=meta["targets"],
            target_positions=meta["target_positions"],
            scores=scores,
            dims=tuple(meta["dims"]),
            method=meta["method"],
            params=meta["params"],
            diagnostics=meta["diagnostics"],
            prompt=meta["prompt"],
            model_name=meta["model_name"],
            target_description=meta.get("target_description", ""),
            target_token_ids=meta.get("target_token_ids", []),
        )

    # ----- displays ------------------------------------------------------------------------------
    def show(self, target: int | str | None = None) -> Any:
        """A circuitsvis view for notebooks (colored tokens; several targets side by side)."""
        from .display import render

        return render(self, target=target)

    def to_html(self, path: str | os.PathLike | None = None, title: str | None = None) -> str:
        """A standalone HTML page that opens without network (the circuitsvis bundle is inlined)."""
        from .display import html_page

        return html_page([self], path=path, title=title)
