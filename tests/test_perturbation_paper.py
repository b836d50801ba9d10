"""#19 item 9: LIME's sample count and lime_text's feature selection. The selection rules are
checked against a numpy re-implementation written here (weighted least squares with an
unpenalised intercept solved from the augmented normal equations, weighted R^2 by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechattr as ma
from mechattr.methods.perturbation import lime_select

TEXT = "The capital of France is"


def np_fit(X, y, w, alpha):
    """Weighted ridge with intercept: minimise sum w (y - b - X beta)^2 + alpha |beta|^2."""
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    P = alpha * np.eye(A.shape[1])
    P[-1, -1] = 0.0  # the intercept is not penalised
    M = A.T @ (w[:, None] * A) + P
    coef = np.linalg.lstsq(M, A.T @ (w * y), rcond=None)[0]
    pred = A @ coef
    ybar = (w * y).sum() / w.sum()
    r2 = 1 - (w * (y - pred) ** 2).sum() / (w * (y - ybar) ** 2).sum()
    return coef[:-1], r2


def np_forward(X, y, w, k):
    used = []
    for _ in range(k):
        best, best_r2 = None, -np.inf
        for f in range(X.shape[1]):
            if f in used:
                continue
            _, r2 = np_fit(X[:, used + [f]], y, w, 0.0)
            if r2 > best_r2:
                best, best_r2 = f, r2
        used.append(best)
    return sorted(used)


def np_highest(X, y, w, k):
    beta, _ = np_fit(X, y, w, 0.01)
    return sorted(np.argsort(-np.abs(beta), kind="stable")[:k].tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_rules_match_numpy(seed):
    rng = np.random.default_rng(seed)
    n, F = 120, 9
    X = (rng.random((n, F)) > 0.4).astype(float)
    X[0] = 1.0
    true = np.array([3.0, 0, 0, -2.0, 0, 0.5, 0, 0, 1.5])
    y = X @ true + 0.3 * rng.standard_normal(n)
    w = np.sqrt(np.exp(-((1 - np.sqrt(X.sum(1) / F)) ** 2) / 0.25**2))
    Xt, yt, wt = (torch.tensor(a) for a in (X, y, w))
    for k in (2, 4):
        assert lime_select(Xt, yt, wt, k, "forward_selection") == np_forward(X, y, w, k)
        assert lime_select(Xt, yt, wt, k, "highest_weights") == np_highest(X, y, w, k)
    # LIME's "auto": forward selection up to 6 features, highest weights above
    assert lime_select(Xt, yt, wt, 4, "auto") == np_forward(X, y, w, 4)
    assert lime_select(Xt, yt, wt, 7, "auto") == np_highest(X, y, w, 7)
    assert lime_select(Xt, yt, wt, 3, "none") == list(range(F))
    assert set(np_forward(X, y, w, 2)) == {0, 3}  # the check is not vacuous


def test_lime_default_samples_and_selection_end_to_end(tiny_model):
    res = ma.attribute(tiny_model, TEXT, " Paris", method="lime", n_samples=300)
    assert res.params["feature_selection"] == "none" and res.params["num_features"] is None
    from mechattr.registry import get_method
    import inspect

    sig = inspect.signature(get_method("lime").fn)
    assert sig.parameters["n_samples"].default == 5000  # the measured, stable default
    sel = ma.attribute(tiny_model, TEXT, " Paris", method="lime", n_samples=300,
                       feature_selection="forward_selection", num_features=2)
    chosen = sel.diagnostics["selected_features"][0]
    assert len(chosen) == 2
    phi = torch.tensor(sel.diagnostics["feature_scores"][0])
    assert int((phi != 0).sum()) <= 2 and all(phi[i] == 0 for i in range(len(phi)) if i not in chosen)
    with pytest.raises(ma.MethodError, match="feature_selection"):
        ma.attribute(tiny_model, TEXT, " Paris", method="lime", n_samples=20, feature_selection="lasso")
    with pytest.raises(ma.MethodError, match="num_features"):
        ma.attribute(tiny_model, TEXT, " Paris", method="lime", n_samples=20, feature_selection="auto", num_features=0)
