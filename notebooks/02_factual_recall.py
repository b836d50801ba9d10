# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Factual recall: "The capital of France is" → " Paris"
#
# Attribute the prediction with integrated gradients, input×gradient and attention rollout, then
# check the story with an intervention: replace " France" by " Italy" and watch " Paris" fall and
# " Rome" rise.
#
# **Model choice.** SmolLM2-135M when it loads (it does predict " Paris"); otherwise the random
# `tiny-gpt2`, where the code runs but the numbers carry no meaning. `MECHATTR_NOTEBOOK_MODEL`
# overrides (CI uses the tiny model).

# %%
import os

import torch

import mechattr as ma
from mechattr import plots

MODEL_NAME = os.environ.get("MECHATTR_NOTEBOOK_MODEL", "smollm2-135m")
try:
    model = ma.load_model(MODEL_NAME)
except Exception as e:
    print(f"{MODEL_NAME} did not load ({e}); falling back to tiny-gpt2")
    MODEL_NAME = "tiny-gpt2"
    model = ma.load_model(MODEL_NAME)
print("model:", MODEL_NAME)

PROMPT, TARGET = "The capital of France is", " Paris"

# %% [markdown]
# ## Three methods
# Rollout (Abnar & Zuidema 2020) is used when the attention family is registered.

# %%
available = {m.name for m in ma.list_methods()}
methods = ["integrated_gradients", "input_x_gradient"]
if "attention_rollout" in available:
    methods.append("attention_rollout")
results = {m: ma.attribute(model, PROMPT, TARGET, method=m) for m in methods}
for m, r in results.items():
    print(f"{m:>22}:", [(t, round(s, 3)) for _, t, s in r.top_k(3, by="abs")])
view = ma.compare(list(results.values()))
fig = plots.agreement_matrix(list(results.values()))

# %% [markdown]
# ## Intervention: France → Italy
# If " France" drives " Paris", swapping it should move probability from " Paris" to " Rome".

# %%
adapter = ma.as_adapter(model)


def next_log_probs(text: str, words: list[str]) -> dict[str, float]:
    tokens = adapter.tokenize(text)
    with torch.no_grad():
        logits = model(tokens)[0, -1]
    lp = torch.log_softmax(logits.float(), -1)
    return {w: float(lp[adapter.single_token(w)]) for w in words}


before = next_log_probs(PROMPT, [" Paris", " Rome"])
after = next_log_probs(PROMPT.replace(" France", " Italy"), [" Paris", " Rome"])
print("log p before:", before)
print("log p after: ", after)
ig = results["integrated_gradients"]
france = ig.tokens.index(" France")
print(f"IG score of ' France': {float(ig.token_scores()[france]):+.3f}; "
      f"change in log p(' Paris') when it is replaced: {after[' Paris'] - before[' Paris']:+.3f}")
if MODEL_NAME.startswith("smollm"):
    # A real model must agree with the attribution: Italy moves mass to Rome.
    assert after[" Rome"] - after[" Paris"] > before[" Rome"] - before[" Paris"]
