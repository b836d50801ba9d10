"""ma.report: one offline HTML page with every method, the agreement matrix, validation and the
run's parameters."""

from __future__ import annotations

import json
import re

import pytest
import torch

import mechattr as ma
from mechattr.errors import InputError, MethodError
from mechattr.report import CSP, report

from .conftest import model_unchanged

PROMPT = "The capital of France is"
METHODS = [("integrated_gradients", {"n_steps": 8}), "input_x_gradient", "saliency"]


@pytest.fixture(scope="module")
def page(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "r.html"
    # TL 4's bridge registers its own module hooks on its first forward pass; do that first so
    # the check below sees only what report() leaves behind.
    tiny_model(torch.tensor([[1, 2, 3]]))
    with model_unchanged(tiny_model):
        text = report(
            tiny_model, PROMPT, " Paris", METHODS, path=path, validate=True,
            checks=("perturbation", "agreement", "ablation"), validation_options={"n_random": 2},
            figures=False,
        )
    return text, path


def _ranks(x: list[float]) -> list[float]:
    # Average ranks written out independently of mechattr.validation.stats.
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma_, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((x - ma_) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma_) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den


def test_page_is_written_and_offline(tiny_model, page):
    text, path = page
    from mechattr.display import split_rendered
    assert path.read_text(encoding="utf-8") == text
    assert text.startswith("<!DOCTYPE html>")
    # No external resource of any kind; the CSP forbids fetches.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert f'content="{CSP}"' in text
    assert text.count("CircuitsVis.render(") >= 4  # side by side + one per method
    # The bundle is inlined once, not once per component.
    bundle = split_rendered(ma.attribute(tiny_model, PROMPT, " Paris", method="saliency").show())[1]
    assert text.count(bundle[-2000:].replace("</script", "<\\/script")) == 1


def test_page_sections(page):
    text, _ = page
    for heading in ("Prompt and target", "All methods side by side", "integrated_gradients",
                    "input_x_gradient", "saliency", "Agreement between methods", "Validation summary",
                    "Validation: perturbation", "Validation: ablation", "Run parameters"):
        assert f"<h2>{heading}" in text, heading
    assert "deletion" in text and "<svg" in text  # deletion/insertion curves as inline SVG
    assert "n_steps" in text and "<th>seed</th>" in text


def test_agreement_matches_independent_spearman(tiny_model, page):
    text, _ = page
    res = [ma.attribute(tiny_model, PROMPT, " Paris", method=m if isinstance(m, str) else m[0],
                        **({} if isinstance(m, str) else m[1])) for m in METHODS]
    s = [r.token_scores().tolist() for r in res]
    keep = [i for i in range(len(s[0])) if any(x[i] != 0 for x in s)]  # BOS is 0 everywhere
    table = text[text.index('<table class="agreement">'):]
    table = table[: table.index("</table>")]
    cells = [float(c) for c in re.findall(r"<td[^>]*>([-0-9.e]+|nan)</td>", table)]
    assert len(cells) == 9
    for i in range(3):
        for j in range(3):
            want = _spearman([s[i][k] for k in keep], [s[j][k] for k in keep])
            assert cells[3 * i + j] == pytest.approx(want, abs=6e-4), (i, j)


def test_layered_result_gets_layer_view(tiny_model):
    text = report(tiny_model, PROMPT, " Paris", ["value_zeroing", "input_x_gradient"], figures=False)
    assert "by layer (choose a layer)" in text
    assert '"layer 0"' in text or "layer 0" in text


def test_figures_inline_png(tiny_model):
    pytest.importorskip("matplotlib")  # figures are the optional part; the rest is tested above
    text = report(tiny_model, PROMPT, " Paris", ["value_zeroing", "input_x_gradient"], figures=True)
    assert text.count('src="data:image/png;base64,') >= 2  # layer heatmap + agreement matrix


def test_contrastive_target_and_params(tiny_model):
    text = report(tiny_model, "The key to the cabinets", " is", ["input_x_gradient"], contrast=" are",
                  figures=False)
    assert "are" in text and "input_x_gradient" in text
    params = re.search(r"<th>options</th><td><code>([^<]*)</code>", text).group(1)
    assert json.loads(params.replace("&quot;", '"')) == {"contrast": " are"}


def test_errors(tiny_model):
    with pytest.raises(InputError, match="single string"):
        report(tiny_model, [PROMPT, PROMPT], " Paris")
    with pytest.raises(InputError, match="unknown options"):
        report(tiny_model, PROMPT, " Paris", n_stepz=3)
    with pytest.raises(MethodError):
        report(tiny_model, PROMPT, " Paris", ["no_such_method"])
    with pytest.raises(InputError, match="twice"):
        report(tiny_model, PROMPT, " Paris", ["ig", "integrated_gradients"])
    with pytest.raises(InputError, match="at least one"):
        report(tiny_model, PROMPT, " Paris", [])
