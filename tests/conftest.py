"""Shared fixtures: small offline models and a check that a call leaves the model as it came."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import pytest
import torch

import mechattr as ma
from mechattr.tl.adapter import tl_major

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

TL_MAJOR = tl_major()


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """The built-in tiny GPT-2 (2 layers, d_model 64, real GPT-2 tokenizer), default kind."""
    return ma.load_model("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_bridge() -> Any:
    return ma.load_model("tiny-gpt2", kind="bridge")


@pytest.fixture(scope="session")
def tiny_hooked() -> Any:
    if TL_MAJOR >= 4:
        pytest.skip("HookedTransformer exists only on TransformerLens 3.x (tested in the TL 3 lane)")
    return ma.load_model("tiny-gpt2", kind="hooked")


@pytest.fixture(scope="session")
def tiny_gqa(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A random 2-layer Llama (bias-free RMSNorm, rotary positions) with 4 query heads sharing 2
    key/value heads, on the real GPT-2 tokenizer; its zero embedding is degenerate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mechattr.tl.loading import gpt2_tokenizer

    tok = gpt2_tokenizer()
    d = tmp_path_factory.mktemp("tiny_gqa")
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return ma.load_model(str(d))


def model_fingerprint(model: Any) -> dict[str, Any]:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "hooks": sum(
            len(getattr(hp, "_forward_hooks", {})) + len(getattr(hp, "_backward_hooks", {}))
            for hp in model.hook_dict.values()
        ),
        "module_hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            for m in model.modules()
        ),
    }


def assert_same_model(before: dict[str, Any], model: Any) -> None:
    after = model_fingerprint(model)
    assert after["hooks"] == before["hooks"], "hooks left on the model"
    assert after["module_hooks"] == before["module_hooks"], "module hooks left on the model"
    assert after["training"] == before["training"], "train/eval mode changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    for n, p in before["params"].items():
        assert torch.equal(p, after["params"][n]), f"weight {n} changed"


@contextlib.contextmanager
def model_unchanged(model: Any) -> Iterator[None]:
    """Assert that the block leaves ``model`` exactly as it came (also when the block raises)."""
    # A TL 4 bridge attaches module hooks of its own on its first forward; warm it up first so
    # only what the block does is compared.
    with torch.no_grad():
        model(ma.as_adapter(model).tokenize("warm up"))
    before = model_fingerprint(model)
    try:
        yield
    finally:
        assert_same_model(before, model)
