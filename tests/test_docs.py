"""The docs site builds in strict mode (broken links, missing pages and bad API references fail),
and the CLI reference is in step with the parser."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `mkdocs build -q` silences warnings and with them strict mode's failure, so never pass -q.
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def test_cli_reference_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_cli_doc.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_cli_reference_names_every_option():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_cli_doc
    finally:
        sys.path.pop(0)
    from mechattr.cli import build_parser

    text = make_cli_doc.render()
    for name, sp in make_cli_doc._subparsers(build_parser()).items():
        assert f"## `mechattr {name}`" in text
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            for opt in a.option_strings:
                assert f"`{opt}`" in text, (name, opt)


def _mkdocs():
    pytest.importorskip("mkdocs", reason="docs build needs mkdocs (dev extra)")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")


def test_docs_build_strict(tmp_path):
    _mkdocs()
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()
    assert "integrated_gradients" in (tmp_path / "site" / "api" / "index.html").read_text()


def test_broken_link_fails_the_build(tmp_path):
    _mkdocs()
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](no-such-page.md)\n")
    cfg = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (tmp_path / "mkdocs.yml").write_text(cfg)
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
    )
    assert out.returncode != 0
    assert "no-such-page.md" in out.stdout + out.stderr
