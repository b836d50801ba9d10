"""Progress bars: validate() and the perturbation methods draw them on stderr unless silenced
(quiet=True, MECHATTR_QUIET=1, or under pytest — hence the subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mechattr import progress

SCRIPT = r"""
import sys, mechattr as ma
m = ma.load_model("tiny-gpt2")
kw = dict(methods=["occlusion"], checks=["perturbation", "agreement"], n_random=2, batch_size=2, seed=0)
ma.validate(m, ["The cat sat on the mat because it"], **kw)
sys.stderr.write("\n@@QUIET@@\n"); sys.stderr.flush()
ma.validate(m, ["The cat sat on the mat because it"], quiet=True, **kw)
sys.stderr.write("\n@@IG@@\n"); sys.stderr.flush()
ma.attribute(m, "The cat sat on the mat", " because", method="ig", n_steps=8, batch_size=2)
sys.stderr.write("\n@@IGQUIET@@\n"); sys.stderr.flush()
ma.attribute(m, "The cat sat on the mat", " because", method="ig", n_steps=8, batch_size=2, quiet=True)
"""


def test_bars_on_stderr_unless_quiet():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "MECHATTR_QUIET")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loud, rest = out.stderr.split("@@QUIET@@")
    quiet, rest = rest.split("@@IG@@")
    ig_loud, ig_quiet = rest.split("@@IGQUIET@@")
    assert "gradient points" in ig_loud  # IG's batches (batch_size=2: several)
    assert "gradient points" not in ig_quiet and "%|" not in ig_quiet
    assert "validate" in loud  # the per-check bar
    assert "perturbation curves (prompts)" in loud
    assert "occlusion" in loud  # the method's own batch loop (batch_size=2: several batches)
    for desc in ("validate", "perturbation curves", "occlusion", "%|"):
        assert desc not in quiet


def test_silenced_rules(monkeypatch):
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.delenv("MECHATTR_QUIET", raising=False)
    assert progress.silenced() is False
    assert progress.silenced(quiet=True) is True
    monkeypatch.setenv("MECHATTR_QUIET", "1")
    assert progress.silenced() is True


def test_quiet_validate_restores_the_environment(tiny_model, monkeypatch):
    monkeypatch.delenv("MECHATTR_QUIET", raising=False)
    import mechattr as ma

    ma.validate(tiny_model, ["The cat sat on the mat"], methods=["saliency"], checks=["agreement"], quiet=True)
    assert "MECHATTR_QUIET" not in os.environ
    monkeypatch.setenv("MECHATTR_QUIET", "0")
    ma.validate(tiny_model, ["The cat sat on the mat"], methods=["saliency"], checks=["agreement"], quiet=True)
    assert os.environ["MECHATTR_QUIET"] == "0"
