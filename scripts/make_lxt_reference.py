"""Reference relevances from LXT (the AttnLRP authors' library) for tests/test_lrp.py.

LXT 2.1 patches Hugging Face model classes and does not import with transformers 5 (its BERT
module imports a helper that transformers 5 removed), so it cannot run next to mechattr's
TransformerLens 4.3. This script builds two tiny models whose weights depend only on a seed and
the parameter names and shapes (not on how a transformers version initialises them), runs LXT's
efficient AttnLRP and CP-LRP maps on them in a separate environment, and writes the input
relevances to tests/data/lxt_reference.json; the test rebuilds the same weights and compares.

    python3 -m venv /tmp/vlxt && /tmp/vlxt/bin/pip install torch==2.13.0 "transformers>=4.51,<4.56" zennit
    /tmp/vlxt/bin/pip install --no-deps lxt==2.1
    /tmp/vlxt/bin/python scripts/make_lxt_reference.py          # writes tests/data/lxt_reference.json

The LRP authors state that the method is patented and free for personal and scientific use
(LXT's README); LXT is a development-time reference only, never a dependency.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "lxt_reference.json"
# "The capital of France is" -> " Paris" in the GPT-2 tokenizer (fixed ids: no tokenizer needed)
IDS = [464, 3139, 286, 4881, 318]
TARGET = 6342
VOCAB = 7000  # covers the ids above; small, so the models build in a blink
CASES = [("gpt2", "attnlrp"), ("gpt2", "cp_lrp"), ("llama", "attnlrp"), ("llama", "cp_lrp")]


def build(arch: str, path: Path) -> None:
    """Save a tiny ``arch`` model (eager attention) whose every parameter is drawn from one seeded
    generator in name order: norm weights U(0.5, 1.5), everything else N(0, 0.2²)."""
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=16, n_ctx=16, vocab_size=VOCAB)
        model = GPT2LMHeadModel(cfg)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                          tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "ln" in name.split(".")[-2] or "norm" in name:
                if name.endswith("weight"):
                    p.copy_(torch.rand(p.shape, generator=g) + 0.5)
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    model.config._attn_implementation = "eager"
    model.save_pretrained(str(path))


def lxt_relevance(arch: str, rule: str, path: Path) -> dict[str, Any]:
    """In this process (LXT patches classes globally): LXT's map for ``rule``, then
    input × (modified) gradient of the target logit at the last position, summed over d_model."""
    import importlib

    import transformers
    from lxt.efficient import monkey_patch

    maps = importlib.import_module(f"lxt.efficient.models.{arch}")
    monkey_patch(importlib.import_module(f"transformers.models.{arch}.modeling_{arch}"),
                 {"attnlrp": maps.attnLRP, "cp_lrp": maps.cp_LRP}[rule])
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager", torch_dtype=torch.float32)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    emb = m.get_input_embeddings()(torch.tensor([IDS])).detach().requires_grad_(True)
    logit = m(inputs_embeds=emb, use_cache=False).logits[0, -1, TARGET]
    logit.backward()
    return {"arch": arch, "rule": rule, "relevance": (emb.grad * emb).sum(-1)[0].tolist(), "logit": float(logit),
            "transformers": transformers.__version__}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", nargs=3, metavar=("ARCH", "RULE", "DIR"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print("RESULT " + json.dumps(lxt_relevance(a.case[0], a.case[1], Path(a.case[2]))))
        return
    import lxt  # noqa: F401  (fail early, with the install hint in the docstring)

    out = {"ids": IDS, "target": TARGET, "target_kind": "logit", "lxt": "2.1", "cases": []}
    with tempfile.TemporaryDirectory() as d:
        for arch in ("gpt2", "llama"):
            build(arch, Path(d) / arch)
        for arch, rule in CASES:
            res = subprocess.run([sys.executable, __file__, "--case", arch, rule, str(Path(d) / arch)],
                                 capture_output=True, text=True, check=True).stdout
            out["cases"].append(json.loads(next(ln[7:] for ln in res.splitlines() if ln.startswith("RESULT "))))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
