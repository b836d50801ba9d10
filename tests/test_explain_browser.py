"""The explain page in headless Chromium: the answer card is present and first, every evidence
section renders (the circuitsvis component draws its tokens), nothing is fetched, no console error,
and a 1400 px screenshot is produced."""

from __future__ import annotations

import re

import pytest

import mechattr as ma
from mechattr.explain import explain

from test_browser import BAD, _chromium, _console, pytestmark  # noqa: F401  (same browser, same skip)

SECTIONS = (
    "Token maps, side by side", "Deletion curves against the controls", "The checks behind the trust rule",
    "Agreement between methods", "Per layer", "Head map", "Counterfactual: heads that carry the difference",
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    m = ma.load_model("zoo:recall")
    path = tmp_path_factory.mktemp("explain-browser") / "explain.html"
    explain(m, "so you the capital of quentaris so is", "rivenby", budget="thorough",
            counterfactual="so you the capital of ostrava so is").to_html(path)
    return path


def test_answer_card_first_sections_rendered_no_network(page, tmp_path):
    out = _chromium(page, tmp_path, "--dump-dom")
    dom = out.stdout
    body = dom[dom.index("<body"):]
    # the first thing after the title is the answer card, before any evidence
    first_block = re.search(r"<h1>.*?</h1>\s*<h2>Answer</h2>\s*<style>.*?</style>\s*<div class=\"card\" id=\"answer-card\">", body, re.S)
    assert first_block is not None, body[:2000]
    card = body[body.index('id="answer-card"'):body.index("<h2>Evidence</h2>")]
    assert "Verdict:" in card and "Methods trusted on this prompt" in card and "Heads that carry it" in card
    for title in SECTIONS:
        i = body.index(f"<h3>{title}</h3>")
        assert body.index("How to read this", i) < body.index("<h3>", i + 1) if title != SECTIONS[-1] else True
    assert body.count("<polyline") >= 5  # deletion curves: methods + four controls
    ids = re.findall(r'<div id="(circuits-vis-[^"]+)"', page.read_text())
    assert ids
    for el in ids:  # drawn by the inlined bundle: the method chooser and the prompt's tokens as spans
        seg = dom[dom.index(f'<div id="{el}"'):][:20000]
        assert "(not trusted)" in seg or "(trusted)" in seg, el
        assert "<span" in seg and "quentaris" in seg, el
    assert re.search(r"<details>\s*<summary>parameters</summary>", body)  # collapsed by default
    console = _console(out.stderr)
    assert not [line for line in console if BAD.search(line)], console
    assert not re.search(r"https?://", "\n".join(console))


def test_screenshot_1400(page, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1400,1000")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert int.from_bytes(data[16:20], "big") == 1400  # PNG width
