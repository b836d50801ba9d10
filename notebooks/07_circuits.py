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
# # Circuits: find, verify by exact patching, and show
#
# Edge attribution patching scores every edge of a model's residual-stream graph (writers: the
# token embedding, each head, each MLP; readers: each head's query/key/value input, each MLP's
# input, the logits) from one forward and one backward per gradient point. Here we
#
# 1. find the circuit of SmolLM2-135M on indirect object identification (IOI) with EAP-IG,
#    check its faithfulness over edge budgets (CPR/CMD) and write the graph page;
# 2. do the same on the zoo's induction model, where we know what to expect, and verify the
#    found circuit by **exact** patching: activation patching of heads, path patching of edges.
#
# **Model choice.** SmolLM2-135M (grouped-query attention 9/3: a query head reads its kv head's
# key and value inputs) when it loads, else the random `tiny-gpt2`; `MECHATTR_NOTEBOOK_MODEL`
# overrides (CI uses the tiny model and fewer pairs and steps).

# %%
import os

import mechattr as ma

MODEL_NAME = os.environ.get("MECHATTR_NOTEBOOK_MODEL", "smollm2-135m")
FAST = MODEL_NAME == "tiny-gpt2"
try:
    model = ma.load_model(MODEL_NAME)
except Exception as e:  # noqa: BLE001 - a notebook should still run without the SmolLM2 package
    print(f"{MODEL_NAME} did not load ({e}); falling back to tiny-gpt2")
    MODEL_NAME, FAST = "tiny-gpt2", True
    model = ma.load_model(MODEL_NAME)
print("model:", MODEL_NAME)

# %% [markdown]
# ## 1. IOI on a language model
# Pairs: "When Mary and John went to the store, John gave a drink to" → " Mary" vs " John";
# the corrupted prompt replaces all three names by others (same token length), so the metric
# (logit difference) collapses there. Scores use the denoising sign: an edge's score estimates
# m(corrupt with that edge set to its clean value) − m(corrupt).

# %%
pairs = ma.circuits.tasks.ioi(model, n=2 if FAST else 8)
print(pairs[0])
res = ma.circuits.edge_attribution(model, pairs, method="eap_ig_inputs", ig_steps=3 if FAST else 5)
print(f"{res.graph.n_edges} edges, metric clean {res.metric_clean:.3f} corrupt {res.metric_corrupt:.3f}, "
      f"{res.diagnostics['seconds']:.1f} s")
res.to_dataframe().head(10)

# %%
curve = ma.circuits.faithfulness_curve(model, res, pairs)
print(curve.to_dataframe())
print(f"CPR {curve.cpr:.3f} (area under f; higher is better)  CMD {curve.cmd:.3f} (area between f and 1; lower is better)")

# %%
circuit = res.circuit(budget=0.01 if not FAST else 0.1)
f = ma.circuits.faithfulness(model, circuit, pairs)
print(f"circuit: {len(circuit)} edges, faithfulness {f.f:.3f}")
page = ma.circuits.circuit_page(res.to_graph_data(budget=0.01 if not FAST else 0.1, faithfulness=curve))
with open("circuit-ioi.html", "w", encoding="utf-8") as fh:
    fh.write(page)
print("wrote circuit-ioi.html")

# %% [markdown]
# ## 2. The zoo's induction model
# `zoo:induction` (2 layers × 4 heads) copies the token that followed the earlier occurrence of
# the last token. Corruption: replace that earlier occurrence by a syllable seen nowhere else, so
# there is nothing to copy. Expected circuit: a previous-token head in layer 0 writes into the key
# input of induction heads in layer 1, which write to the logits.

# %%
import random

from mechattr.zoo.tasks import INDUCTION

zoo = ma.load_model("zoo:induction")
print("model: zoo:induction")
rng = random.Random(0)
zpairs = []
for ex in INDUCTION.examples(8, seed=0):
    words = ex.words
    corrupt = list(words)
    corrupt[ex.truth[1]] = rng.choice(sorted(set(INDUCTION.words) - set(words)))
    zpairs.append(ma.circuits.tasks.Pair(ex.prompt, " ".join(corrupt), " " + ex.answer, kind="logit"))
zres = ma.circuits.edge_attribution(zoo, zpairs, method="eap_ig_inputs")
zcircuit = zres.circuit(budget=0.05)
print("circuit at 5 %:", zcircuit)
print("faithfulness:", round(ma.circuits.faithfulness(zoo, zcircuit, zpairs).f, 3))

# %% [markdown]
# ### Verify by exact patching
# Activation patching of every layer-1 head (clean output into the corrupt run) finds the
# induction heads; path patching of the edges from each layer-0 head into the strongest one's key
# input finds the previous-token head — no estimates involved.

# %%
heads = ma.circuits.patch(zoo, zpairs, nodes=[f"a1.h{h}" for h in range(4)])
print(heads.to_dataframe())
ind = max(range(4), key=lambda h: heads.effects[f"a1.h{h}"])
edges = ma.circuits.patch(zoo, zpairs, edges=[(f"a0.h{h}", f"a1.h{ind}<k>") for h in range(4)])
print(edges.to_dataframe())
prev = max(range(4), key=lambda h: list(edges.effects.values())[h])
print(f"previous-token head a0.h{prev} -> induction head a1.h{ind} key:",
      (f"a0.h{prev}", f"a1.h{ind}<k>") in zcircuit)
with open("circuit-induction.html", "w", encoding="utf-8") as fh:
    fh.write(ma.circuits.circuit_page(zres.to_graph_data(budget=0.05)))
print("wrote circuit-induction.html")
