"""Screenshots of ``mechattr explain`` pages for the README and docs (docs/img/explain-*.png).

Runs the demo's three examples on SmolLM2-135M and photographs the first screen of each page with
headless Debian chromium at 1400 px wide (no network: the pages carry a strict CSP and chromium's
DNS is mapped to nowhere).

    python scripts/make_explain_screenshots.py [--model smollm2-135m] [--out docs/img] [--height 1000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
    "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=8000",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args()
    import mechattr as ma
    from mechattr.explain.demo import run_demo

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian chromium (apt-get install chromium)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ma.load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        pages = run_demo(model, Path(tmp) / "explain.html", quiet=True)
        for page, name in zip(pages, ("recall", "agreement", "pun")):
            shot = out / f"explain-{name}.png"
            subprocess.run(
                [chromium, *FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size=1400,{args.height}",
                 f"--screenshot={shot.resolve()}", page.resolve().as_uri()],
                check=True, capture_output=True, timeout=180,
            )
            print("wrote", shot)


if __name__ == "__main__":
    main()
