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
# # Subject–verb agreement with a contrastive target
#
# "The key to the cabinets" → " is" or " are"? The singular head noun " key" should decide, not
# the nearer plural " cabinets". A contrastive target, logit(" is") − logit(" are"), asks exactly
# that question: which tokens push the model towards the correct verb rather than the wrong one.
#
# **Model choice.** SmolLM2-135M when it loads, else the random `tiny-gpt2` (numbers without
# meaning); `MECHATTR_NOTEBOOK_MODEL` overrides (CI uses the tiny model).

# %%
import os

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

PROMPT = "The key to the cabinets"

# %% [markdown]
# ## Attribute the contrast
# `contrast=" are"` turns the target into logit(" is") − logit(" are").

# %%
methods = ["integrated_gradients", "input_x_gradient", "saliency"]
results = [ma.attribute(model, PROMPT, " is", contrast=" are", method=m) for m in methods]
for r in results:
    print(f"{r.method:>22}:", [(t, round(s, 3)) for _, t, s in r.top_k(3, by="abs")])
ig = results[0]
key, cabinets = ig.tokens.index(" key"), ig.tokens.index(" cabinets")
print(f"IG: ' key' {float(ig.token_scores()[key]):+.3f}, ' cabinets' {float(ig.token_scores()[cabinets]):+.3f}")

# %% [markdown]
# ## Do the methods agree?
# Spearman correlation of the token rankings; agreement is descriptive, not proof.

# %%
agreement = plots.rank_agreement(results)
print(agreement)
fig = plots.agreement_matrix(results, labels=methods)
fig_heat = plots.token_heatmap(ig)

# %% [markdown]
# ## Contrast versus plain target
# The plain log-prob of " is" also credits tokens that make any verb likely; the contrast
# removes that shared part.

# %%
plain = ma.attribute(model, PROMPT, " is", method="integrated_gradients")
print("plain IG top:   ", plain.top_k(3, by="abs"))
print("contrast IG top:", ig.top_k(3, by="abs"))
