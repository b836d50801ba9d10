"""TL 3.x and TL 4.x give the same scores for the same weights.

Within the TL 3 lane HookedTransformer and TransformerBridge are compared directly. Across lanes,
`make test` runs the TL 4 lane first with MECHATTR_XLANE_DIR set: it writes its scores there, and
the TL 3 lane (run with MECHATTR_XLANE_REQUIRE=1) compares against them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import mechattr as ma

from .conftest import TL_MAJOR

CASES = [
    ("ig", "The capital of France is", " Paris", {"n_steps": 32}),
    ("saliency", "The key to the cabinets", " is", {}),
    ("ixg", "The key to the cabinets", " is", {}),
    ("smoothgrad", "One two three", None, {"n_samples": 4}),
    ("gradient_shap", "One two three", None, {"n_samples": 8}),
    ("attention_rollout", "The capital of France is", " Paris", {}),
    ("attention_flow", "The capital of France is", " Paris", {}),
    ("attention_x_gradient", "The capital of France is", " Paris", {}),
    ("value_weighted_attention", "The capital of France is", " Paris", {}),
    ("value_zeroing", "The capital of France is", " Paris", {}),
    ("occlusion", "The capital of France is", " Paris", {}),
    ("shapley", "The capital of France is", " Paris", {}),
    ("lime", "The capital of France is", " Paris", {"n_samples": 64}),
    ("dig", "The capital of France is", " Paris", {"n_steps": 18, "n_anchors": 8, "anchor_vocab": 500}),
]


def scores_for(model) -> dict[str, list]:
    out = {}
    for method, text, target, params in CASES:
        out[method] = ma.attribute(model, text, target, method=method, **params).scores.tolist()
    out["contrast"] = ma.attribute(model, "The key to the cabinets", " is", contrast=" are", method="ig", n_steps=16).scores.tolist()
    return out


def test_hooked_and_bridge_agree_in_tl3(tiny_hooked, tiny_bridge):
    a, b = scores_for(tiny_hooked), scores_for(tiny_bridge)
    for k in a:
        torch.testing.assert_close(torch.tensor(a[k]), torch.tensor(b[k]), atol=1e-4, rtol=1e-4, msg=k)


def test_bridge_forward_and_fast_path_agree_in_tl4(tiny_bridge, monkeypatch):
    """The TL 4 lane's counterpart of the TL 3 lane's HookedTransformer-vs-bridge comparison: the
    two forwards it has (the bridge's own and the hook-free fast path over the same weights) give
    the same scores for every case the lanes exchange."""
    if TL_MAJOR < 4:
        pytest.skip("TL 3 compares HookedTransformer with the bridge (test_hooked_and_bridge_agree_in_tl3)")
    assert ma.as_adapter(tiny_bridge).fast_path() is not None
    fast = scores_for(tiny_bridge)
    monkeypatch.setenv("MECHATTR_FAST_PATH", "0")
    slow = scores_for(tiny_bridge)
    for k in fast:
        torch.testing.assert_close(torch.tensor(fast[k]), torch.tensor(slow[k]), atol=1e-4, rtol=1e-4, msg=k)


def test_scores_agree_across_tl_lines(tiny_model):
    d = os.environ.get("MECHATTR_XLANE_DIR")
    if not d:
        pytest.skip("set MECHATTR_XLANE_DIR (done by `make test`) to compare TL 3 and TL 4 lanes")
    mine = scores_for(tiny_model)
    here = Path(d)
    here.mkdir(parents=True, exist_ok=True)
    (here / f"tl{TL_MAJOR}.json").write_text(json.dumps(mine))
    other = here / ("tl4.json" if TL_MAJOR < 4 else "tl3.json")
    if not other.exists():
        # The first lane (TL 4 under `make test`): nothing to compare yet. It checks what it hands
        # the second lane -- every case present, finite, non-empty, and read back unchanged.
        assert not os.environ.get("MECHATTR_XLANE_REQUIRE"), f"the other lane's scores are missing: {other}"
        back = json.loads((here / f"tl{TL_MAJOR}.json").read_text())
        assert set(back) == {c[0] for c in CASES} | {"contrast"} and back == mine
        for k, v in back.items():
            t = torch.tensor(v)
            assert t.numel() > 0 and bool(torch.isfinite(t).all()) and bool(t.abs().sum() > 0), k
        return
    theirs = json.loads(other.read_text())
    for k in mine:
        torch.testing.assert_close(torch.tensor(mine[k]), torch.tensor(theirs[k]), atol=1e-4, rtol=1e-4, msg=k)
