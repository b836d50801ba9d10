"""`mechattr circuit`: task pairs and user pairs end to end on the tiny model; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mechattr as ma
from mechattr.cli import main


def test_circuit_cli_task_and_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_html, mib = tmp_path / "c.json", tmp_path / "c.html", tmp_path / "mib.json"
    rc = main(["circuit", "tiny-gpt2", "--task", "capital", "--n", "2", "--method", "eap", "--budget", "0.1",
               "--json", str(out_json), "--html", str(out_html), "--mib", str(mib)])
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["method"] == "eap" and data["direction"] == "denoise" and data["n_layers"] == 2
    assert data["faithfulness"] and abs(data["faithfulness"][-1]["f"] - 1) < 1e-3
    assert "<html" in out_html.read_text()
    assert json.loads(mib.read_text())["edges"]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"clean": "The capital of France is", "corrupt": "The capital of Italy is",
                                 "target": " Paris", "contrast": " Rome"}) + "\n")
    assert main(["circuit", "tiny-gpt2", "--pairs", str(pairs), "--method", "eap", "--no-curve", "-q"]) == 0
    pairs.write_text('{"clean": "a b"}\n')
    assert main(["circuit", "tiny-gpt2", "--pairs", str(pairs)]) == 2
    assert "clean" in capsys.readouterr().err
    assert main(["circuit", "tiny-gpt2", "--task", "ioi", "--budget", "3"]) == 2


def test_tasks_pairs_have_equal_lengths(tiny_model) -> None:
    a = ma.as_adapter(tiny_model)
    for name in ma.circuits.tasks.TASKS:
        for p in ma.circuits.tasks.make(name, tiny_model, n=3, seed=1):
            assert a.tokenize(p.clean).shape == a.tokenize(p.corrupt).shape
    ioi = ma.circuits.tasks.ioi(tiny_model, n=2)
    assert ioi[0].target.strip() in ioi[0].clean and ioi[0].target.strip() not in ioi[0].corrupt
    assert ma.circuits.tasks.capital(tiny_model, n=1)[0].corrupt == "The capital of Italy is"
