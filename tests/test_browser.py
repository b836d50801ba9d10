"""The report page in a real headless browser (Debian ``chromium``): the circuitsvis components
render, nothing is fetched from the network, and a screenshot is produced.

Network: the page carries a strict Content-Security-Policy (no fetches of any kind), so any
attempted request shows up as a CSP violation on the console, which Chromium logs to stderr with
``--enable-logging=stderr``. The test proves that detector works by loading a page that does try
to fetch. Chromium also runs with DNS mapped to nowhere, so nothing could leave the machine anyway.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import os

import pytest
import torch

from mechattr.report import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI installs chromium (.ci/run), so there a missing browser is a failure, not a skip.
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must install Debian chromium for the browser test (see .ci/run)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian chromium (apt-get install chromium); CI installs it"
)

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
    "--virtual-time-budget=10000", "--window-size=1200,1600",
]


def _chromium(path, tmp_path, *extra):
    out = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, path.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    return out


def _console(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if ":CONSOLE" in l]


BAD = re.compile(r"Content Security Policy|Refused to|Uncaught|Failed to load|ERR_|TypeError|ReferenceError")


@pytest.fixture(scope="module")
def page(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("browser") / "report.html"
    report(tiny_model, "The capital of France is", " Paris", ["input_x_gradient", "value_zeroing"],
           path=path, figures=False)
    return path


def test_components_render_without_errors_or_network(page, tmp_path):
    out = _chromium(page, tmp_path, "--dump-dom")
    dom = out.stdout
    ids = re.findall(r'<div id="(circuits-vis-[^"]+)"', page.read_text())
    assert len(ids) >= 3
    for el in ids:
        inner = re.search(rf'<div id="{el}"[^>]*>(.*?)</div>', dom, re.S)
        assert inner is not None and "<span" in inner.group(1) or "cursor: pointer" in inner.group(1), el
    # Colored tokens: real spans with the prompt's tokens and some non-white background.
    assert dom.count('class="colored-tokens"') >= 2
    assert "capital" in dom and "France" in dom
    backgrounds = set(re.findall(r"background-color: (rgb\([^)]*\))", dom))
    assert backgrounds - {"rgb(255, 255, 255)", "black", "white"}
    bad = [l for l in _console(out.stderr) if BAD.search(l)]
    assert not bad, bad
    assert not re.search(r"https?://", "\n".join(_console(out.stderr)))


def test_network_attempt_would_be_caught(page, tmp_path):
    # The same page plus one external image: the CSP must block it and the console must say so,
    # otherwise the test above could not fail.
    leaky = tmp_path / "leaky.html"
    leaky.write_text(page.read_text().replace("<body>", '<body><img src="https://example.com/x.png">', 1))
    out = _chromium(leaky, tmp_path, "--dump-dom")
    assert any(BAD.search(l) for l in _console(out.stderr)), out.stderr[-2000:]


def test_screenshot(page, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(page, tmp_path, f"--screenshot={shot}")
    assert shot.exists()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # A blank page compresses to a few kB; rendered text and coloured tokens do not.
    assert len(data) > 20_000
