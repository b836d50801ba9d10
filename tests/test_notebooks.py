"""Every notebook script (jupytext percent format) runs top to bottom on the tiny offline model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.py"))


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS][:3] == [
        "01_quickstart.py", "02_factual_recall.py", "03_agreement_contrastive.py",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "MECHATTR_NOTEBOOK_MODEL": "tiny-gpt2", "MECHATTR_QUIET": "1"}
    code = f"import runpy; runpy.run_path({str(path)!r}, run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "model: tiny-gpt2" in out.stdout
