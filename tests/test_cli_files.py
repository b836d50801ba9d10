"""File options of every CLI subcommand: a file that cannot be read (not UTF-8, a directory,
missing) or written (a directory, a file where a directory is wanted, no permission) is a
one-line input error, exit 2, that says what to do -- found before any model is loaded (issue 19,
item 12a)."""

from __future__ import annotations

import pytest

import mechattr as ma
from mechattr.cli import main


class _Loaded(Exception):
    pass


@pytest.fixture()
def no_model(monkeypatch):
    """The checks must come before the (slow) model load: loading fails the test."""

    def boom(*a, **k):
        raise _Loaded("the model was loaded before the file options were checked")

    monkeypatch.setattr(ma, "load_model", boom)


@pytest.fixture()
def latin1(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_bytes("Le café de la gare est\n".encode("latin-1"))
    return p


def _cases(tmp_path, latin1):
    a_dir = str(tmp_path)
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    missing_dir = str(a_file / "sub" / "out.json")  # a file stands where a directory must be
    return [
        (["validate", "tiny-gpt2", "--prompts", str(latin1)], "not UTF-8"),
        (["validate", "tiny-gpt2", "--prompts", a_dir], "is a directory"),
        (["validate", "tiny-gpt2", "Hi", "--json", missing_dir], "is a file, not a directory"),
        (["validate", "tiny-gpt2", "Hi", "--json", a_dir], "is a directory"),
        (["validate", "tiny-gpt2", "Hi", "--html", missing_dir], "is a file, not a directory"),
        (["attribute", "tiny-gpt2", "Hi", "--html", missing_dir], "--html"),
        (["attribute", "tiny-gpt2", "Hi", "--json", a_dir], "--json"),
        (["attribute", "tiny-gpt2", "Hi", "--save", missing_dir], "--save"),
        (["attribute-dataset", str(latin1), "--model", "tiny-gpt2", "--out", str(tmp_path / "o")], "not UTF-8"),
        (["attribute-dataset", str(a_file), "--model", "tiny-gpt2", "--out", str(a_file)], "not a directory"),
        (["report", "tiny-gpt2", "Hi", "--out", missing_dir], "--out"),
        (["demo", "--model", "tiny-gpt2", "--out", a_dir], "--out"),
    ]


def test_every_file_option_is_checked_before_the_model_loads(tmp_path, latin1, no_model, capsys):
    for argv, message in _cases(tmp_path, latin1):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert message in err and "internal error" not in err and "Traceback" not in err, (argv, err)
        assert err.strip().count("\n") == 0, err  # one line


def test_a_write_that_fails_after_the_checks_is_still_an_input_error(tmp_path, monkeypatch, capsys):
    import mechattr._cli_files as files

    monkeypatch.setattr(files, "check_args", lambda args: None)  # as if the directory vanished mid-run
    blocker = tmp_path / "gone"
    blocker.write_text("")
    out = blocker / "r.json"
    rc = main(["attribute", "tiny-gpt2", "Hi", "-m", "saliency", "-q", "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot use" in err and str(blocker) in err and "internal error" not in err, err


def test_good_paths_still_work(tmp_path, capsys):
    p = tmp_path / "p.txt"
    p.write_text("The capital of France is\n", encoding="utf-8")
    out = tmp_path / "new" / "shards"  # a directory that does not exist yet is created
    assert main(["attribute-dataset", str(p), "--model", "tiny-gpt2", "-m", "saliency", "--out", str(out), "-q"]) == 0
    assert (out / "manifest.json").is_file()
    rj = tmp_path / "more" / "v.json"  # validate --json creates missing directories like --html
    assert main(["validate", "tiny-gpt2", "The capital of France is", "--methods", "saliency", "--checks", "completeness", "-q", "--json", str(rj)]) == 0
    assert rj.is_file()


def test_the_dataset_api_reads_prompt_files_the_same_way(tiny_model, latin1, tmp_path):
    with pytest.raises(ma.InputError, match="not UTF-8"):
        ma.attribute_dataset(tiny_model, str(latin1), method="saliency", out_dir=str(tmp_path / "o"), quiet=True)
