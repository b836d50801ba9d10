"""The command line, run in-process through its main() and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mechattr.cli import main


def test_methods_lists_every_method(capsys):
    import mechattr as ma

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for m in ma.list_methods():
        assert m.name in out
    assert main(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ig = next(d for d in data if d["name"] == "integrated_gradients")
    assert "ig" in ig["aliases"] and "n_steps" in ig["parameters"]


def test_models(capsys):
    assert main(["models"]) == 0
    assert "tiny-gpt2" in capsys.readouterr().out


def test_attribute_writes_html_json_and_result(tmp_path, capsys):
    html, js, saved = tmp_path / "o.html", tmp_path / "o.json", tmp_path / "o.mechattr"
    rc = main([
        "attribute", "tiny-gpt2", "The capital of France is", "--method", "ig", "--target", " Paris",
        "-p", "n_steps=16", "-p", "baseline='pad'", "--html", str(html), "--json", str(js), "--save", str(saved),
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "' France'" in out and "completeness_error" in out
    d = json.loads(js.read_text())
    assert d["params"]["n_steps"] == 16 and d["params"]["baseline"] == "pad"
    assert "CircuitsVis.render(" in html.read_text()
    import mechattr as ma

    assert ma.Attribution.load(saved).targets == [" Paris"]


def test_attribute_json_to_stdout_and_contrast(capsys):
    rc = main(["attribute", "tiny-gpt2", "The key to the cabinets", "-m", "ixg", "-t", " is", "-c", " are", "--json", "-"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["targets"] == ["' is' vs ' are'"] and d["method"] == "input_x_gradient"


def test_continuation_and_generate(capsys):
    assert main(["attribute", "tiny-gpt2", "Hello there", "-m", "saliency", "--continuation", " my friend", "--json", "-"]) == 0
    assert len(json.loads(capsys.readouterr().out)["targets"]) == 2
    assert main(["attribute", "tiny-gpt2", "Hello there", "-m", "saliency", "--generate", "2", "-q"]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attribute", "tiny-gpt2", "Hi", "-m", "igg"], "Did you mean"),
        (["attribute", "tiny-gpt2", "", "-m", "ig"], "empty"),
        (["attribute", "tiny-gpt2", "Hi", "-m", "ig", "-p", "n_steps"], "KEY=VALUE"),
        (["attribute", "tiny-gpt2", "Hi", "-m", "ig", "-p", "n_steps=0"], "n_steps"),
        (["attribute", "tiny-gpt2", "Hi", "-t", " a b c d"], "ForcedContinuation"),
    ],
)
def test_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_debug_shows_traceback():
    from mechattr.errors import MethodError

    with pytest.raises(MethodError):
        main(["--debug", "attribute", "tiny-gpt2", "Hi", "-m", "igg"])


def test_demo_writes_offline_page(tmp_path):
    out = tmp_path / "demo.html"
    assert main(["demo", "--model", "tiny-gpt2", "--out", str(out), "-q", "--methods", "ig,ixg"]) == 0
    # mechattr explain on three examples, one offline page each, the answer card first
    for path in (out, tmp_path / "demo-agreement.html", tmp_path / "demo-pun.html"):
        text = path.read_text()
        assert "CircuitsVis.render(" in text and "var CircuitsVis=" in text
        assert text.index('id="answer-card"') < text.index("Evidence")
        assert "integrated_gradients" in text and "input_x_gradient" in text


def test_console_script_subprocess():
    r = subprocess.run([sys.executable, "-m", "mechattr", "methods"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "integrated_gradients" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mechattr", "attribute", "tiny-gpt2", "x", "-m", "nope"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_validate_subcommand(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The capital of France is\n\nOne two three\n")
    html = tmp_path / "v.html"
    rc = main(["validate", "tiny-gpt2", "--prompts", str(prompts), "--methods", "ixg,ig", "--checks",
               "completeness,agreement", "--html", str(html), "-o", "method_params={'ig': {'n_steps': 8}}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "integrated_gradients" in out or "ig" in out
    assert html.exists() and "<table" in html.read_text()
    assert main(["validate", "tiny-gpt2", "--prompts", str(tmp_path / "none.txt")]) == 2
