"""Every notebook script (jupytext percent format) runs top to bottom on offline models.

Notebooks that pick their language model from ``MECHATTR_NOTEBOOK_MODEL`` must use the tiny model
here (CI's time budget); the zoo notebooks (04, 05) load zoo models and print which one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.py"))
# A notebook that chooses its LM from the environment variable.
CHOOSES_MODEL = re.compile(r"MODEL_NAME\s*=\s*os\.environ\.get\(\s*[\"']MECHATTR_NOTEBOOK_MODEL")


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS][:6] == [
        "01_quickstart.py", "02_factual_recall.py", "03_agreement_contrastive.py",
        "04_linking_heads_sae.py", "05_sanity_checks.py", "06_pun_probe.py",
    ]


def test_model_choice_is_detected():
    by_name = {p.name: bool(CHOOSES_MODEL.search(p.read_text())) for p in NOTEBOOKS}
    assert by_name["01_quickstart.py"] and by_name["06_pun_probe.py"]
    assert not by_name["04_linking_heads_sae.py"] and not by_name["05_sanity_checks.py"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "MECHATTR_NOTEBOOK_MODEL": "tiny-gpt2", "MECHATTR_QUIET": "1"}
    code = f"import runpy; runpy.run_path({str(path)!r}, run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    models = re.findall(r"^model: (\S+)", out.stdout, flags=re.M)
    assert models, "a notebook prints the model it uses ('model: NAME')"
    if CHOOSES_MODEL.search(path.read_text()):
        assert models[0] == "tiny-gpt2"
    else:
        assert all(m.startswith("zoo:") for m in models), models
