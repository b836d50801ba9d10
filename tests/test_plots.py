"""mechattr.plots: figures from results, and a clear message without matplotlib."""

from __future__ import annotations

import builtins
import subprocess
import sys

import pytest
import torch

import mechattr as ma
from mechattr.errors import InputError

matplotlib = pytest.importorskip("matplotlib")  # optional dependency: both CI lanes install it
from mechattr import plots  # noqa: E402

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def results(tiny_model):
    ixg = ma.attribute(tiny_model, PROMPT, [" Paris", " London"], method="input_x_gradient")
    sal = ma.attribute(tiny_model, PROMPT, [" Paris", " London"], method="saliency")
    vz = ma.attribute(tiny_model, PROMPT, " Paris", method="value_zeroing")
    return ixg, sal, vz


def test_token_heatmap_shows_the_scores(results):
    ixg = results[0]
    fig = plots.token_heatmap(ixg)
    img = fig.axes[0].images[0]
    want = ixg.scores.float().numpy()
    assert img.get_array().shape == want.shape
    assert (abs(img.get_array() - want) < 1e-6).all()
    lo, hi = img.get_clim()
    assert lo == pytest.approx(-hi)  # signed scores: colour scale centred on 0
    assert len(plots.to_png_base64(fig)) > 1000


def test_unsigned_uses_sequential_scale(results):
    img = plots.token_heatmap(results[1]).axes[0].images[0]
    assert img.get_clim()[0] == 0.0


def test_layer_heatmap(results):
    vz = results[2]
    img = plots.layer_heatmap(vz).axes[0].images[0]
    want = vz.scores
    for _ in vz.dims[1:-2]:
        want = want.sum(1)
    assert (abs(img.get_array() - want[:, 0].float().numpy()) < 1e-6).all()
    with pytest.raises(InputError, match="layered"):
        plots.layer_heatmap(results[0])


def test_agreement_matrix_from_results(results):
    ixg, sal, _ = results
    m = plots.rank_agreement([ixg, sal])
    assert m.shape == (2, 2) and float(m[0, 0]) == pytest.approx(1.0)
    # Independent: Spearman as Pearson of argsort ranks (no ties in float scores), BOS dropped.
    a, b = ixg.token_scores()[1:].double(), sal.token_scores()[1:].double()
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    want = torch.corrcoef(torch.stack([ra, rb]))[0, 1]
    assert float(m[0, 1]) == pytest.approx(float(want), abs=1e-9)
    fig = plots.agreement_matrix([ixg, sal])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["input_x_gradient", "saliency"]
    with pytest.raises(InputError, match="square"):
        plots.agreement_matrix([[1.0, 0.5]])


def test_deletion_curves_and_scatter():
    fig = plots.deletion_curves({"ig": [0, -1, -2], "random": [0, -0.5, -1]}, band=([0, -1, -2], [0, 0, 0]))
    lines = fig.axes[0].get_lines()
    assert [list(l.get_ydata()) for l in lines] == [[0, -1, -2], [0, -0.5, -1]]
    assert list(lines[0].get_xdata()) == [0, 0.5, 1]
    with pytest.raises(InputError):
        plots.deletion_curves({"ig": [1, 2]}, x=[0, 0.5, 1])
    fig = plots.ablation_scatter([1, 2, 3], [0.1, 0.3, 0.2], labels=["a", " b", "c"])
    assert "Spearman 0.50" in fig.axes[0].get_title()
    with pytest.raises(InputError):
        plots.ablation_scatter([1, 2], [1])


def test_missing_matplotlib_message():
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def fake(name, *a, **k):\n"
        "    if name.startswith('matplotlib'): raise ImportError('no matplotlib')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = fake\n"
        "from mechattr import plots\n"
        "try:\n"
        "    plots.deletion_curves({'a': [0, 1]})\n"
        "except ImportError as e:\n"
        "    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "MSG" in out.stdout and "pip install matplotlib" in out.stdout, out.stderr
