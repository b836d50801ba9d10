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
# # Linking token attributions to heads, probes and SAE features
#
# A token heatmap says *which inputs* matter; this notebook asks *through which parts of the
# model*. We use the zoo (`docs/zoo.md`): 2-layer GPT-2 models trained on tasks whose deciding
# tokens are known, shipped with a linear probe and a sparse autoencoder each, all offline.
#
# 1. **Heads** on `zoo:induction` (`x_0 … x_{L-1} x_k → x_{k+1}`): attribution patching and EAP-IG
#    find the heads that matter; token × head maps show *where* each head reads from.
# 2. **A linear probe as the target** on `zoo:agreement`: which tokens make the residual stream
#    say "singular subject"?
# 3. **SAE features**: which features at the last position carry the answer, and which tokens
#    activate them (the token → feature table).
#
# **Model choice.** Only zoo models (they load in seconds and carry ground truth). When
# `MECHATTR_NOTEBOOK_MODEL` is set (CI does), fewer examples are used.

# %%
import os
import tempfile
from collections import Counter

import torch

import mechattr as ma
import mechattr.linking as lk
from mechattr import zoo

FAST = bool(os.environ.get("MECHATTR_NOTEBOOK_MODEL"))
N_EXAMPLES = 4 if FAST else 24
EAP_STEPS = 8

model = ma.load_model("zoo:induction")
task = zoo.get_task("induction")
print("model: zoo:induction", "| held-out accuracy from its card:", zoo.card("induction")["heldout_accuracy"])

# %% [markdown]
# ## A clean and a corrupted prompt
# Attribution patching compares two runs of equal length. The corrupted prompt replaces the token
# to be copied, `x_{k+1}`, by a syllable that occurs nowhere in the prompt: the model can then no
# longer know the answer. The metric is the logit difference answer − replacement, which (unlike a
# log-probability close to 0) does not saturate on a model this accurate.

# %%
def corrupted(ex) -> tuple[str, str]:
    """(corrupted prompt, the replacement word) for an induction example."""
    words = ex.words
    unused = [w for w in task.words if w not in words]
    k1 = ex.truth[0]  # word position of x_{k+1}
    return " ".join(words[:k1] + [unused[0]] + words[k1 + 1:]), unused[0]


ex = task.examples(1, seed=0)[0]
corrupt, repl = corrupted(ex)
target = ma.Contrast(" " + ex.answer, " " + repl)
copied = ex.truth[0] + 1  # token position of x_{k+1} (BOS shifts word positions by one)
print("clean:   ", ex.prompt, "->", ex.answer)
print("corrupt: ", corrupt)
print(f"copied token {ex.answer!r} at token position {copied}; the prompt has {len(ex.words) + 1} tokens with BOS")

# %% [markdown]
# ## Attribution patching and EAP-IG over heads
# `(a_clean − a_corrupt) · ∂metric/∂a` per head output, gradient at the corrupt run
# (`direction="denoise"`, the default; `direction="noise"` is the EAP-IG paper's sign) (Nanda 2023; Syed et al. 2023), and its
# integrated-gradients form EAP-IG (Hanna et al. 2024), which averages the gradient along the path
# from the corrupted to the clean input. EAP-IG is complete at the input: the layer-0 residual
# scores sum to metric(clean) − metric(corrupt); the printed error says how closely.

# %%
ap = lk.head_attribution(model, ex.prompt, corrupt, target)
eap = lk.head_attribution(model, ex.prompt, corrupt, target, ig_steps=EAP_STEPS)
print(f"metric clean {eap.metric_clean:+.2f}, corrupt {eap.metric_corrupt:+.2f}")
print("attribution patching, heads [layer, head]:\n", ap.heads.round(decimals=2))
print("EAP-IG, heads [layer, head]:\n", eap.heads.round(decimals=2))
print("EAP-IG top heads:", [(f"L{l}H{h}", round(s, 2)) for l, h, s in eap.top_heads(3)])
print(f"EAP-IG completeness error at the input: {eap.diagnostics['completeness_error_resid0']:.3g} "
      f"(of a metric change of {eap.diagnostics['metric_delta']:.2f})")
table = eap.to_dataframe()
print(table[table.kind == "head"].sort_values("score", key=abs, ascending=False).head(4).to_string(index=False))

# %% [markdown]
# `heads_by_pos` keeps the position at which a head's output matters. A layer-0 head that helps
# induction works *before* the final token: look at which position carries its score.

# %%
l0 = eap.heads_by_pos[0]  # [pos, head]
for h in range(l0.shape[1]):
    p = int(l0[:, h].abs().argmax())
    print(f"L0H{h}: largest |score| at position {p} ({eap.tokens[p]!r}), score {float(l0[p, h]):+.2f}")

# %% [markdown]
# ## Token × head maps: where does each head read from?
# A head's output at the last position is `Σ_src pattern[src] · v[src] · W_O` (Elhage et al. 2021);
# `token_head_map(mode="direct")` scores each source's piece by its direct effect on the target
# logits. For an induction head the largest piece should come from the earlier part of the
# prompt: the copied token `x_{k+1}` (the textbook circuit, where a previous-token head has written
# "my predecessor was x_k" there) or the token right after it (a variant where the information
# "my predecessor was x_{k+1}" is what gets read). The map tells which one this model learned.

# %%
hm = lk.token_head_map(model, ex.prompt, target, mode="direct")
view = lk.head_view(hm, layer=1)
for h in range(hm.scores.shape[1]):
    row = hm.scores[1, h, 0]
    src = int(row.argmax())
    print(f"L1H{h}: largest piece from position {src} ({hm.tokens[src]!r}, offset {src - copied:+d} "
          f"from the copied token), EAP-IG score {float(eap.heads[1, h]):+.2f}")

# %% [markdown]
# ## Over many examples
# For every layer-1 head: its mean EAP-IG score, and where its token × head map points relative to
# the copied token. If the heads that attribution patching ranks highest are the induction heads,
# their maps should point consistently at one fixed offset from the copied token.

# %%
n_heads = model.cfg.n_heads
scores = torch.zeros(N_EXAMPLES, n_heads)
offsets: list[Counter] = [Counter() for _ in range(n_heads)]
for i, e in enumerate(task.examples(N_EXAMPLES, seed=1)):
    c, r = corrupted(e)
    tgt = ma.Contrast(" " + e.answer, " " + r)
    scores[i] = lk.head_attribution(model, e.prompt, c, tgt, ig_steps=EAP_STEPS).heads[1]
    m = lk.token_head_map(model, e.prompt, tgt, mode="direct").scores[1, :, 0]  # head src
    for h in range(n_heads):
        offsets[h][int(m[h].argmax()) - (e.truth[0] + 1)] += 1
for h in range(n_heads):
    off, count = offsets[h].most_common(1)[0]
    print(f"L1H{h}: mean EAP-IG {float(scores[:, h].mean()):+6.2f} | map points at offset {off:+d} "
          f"from the copied token in {count}/{N_EXAMPLES} examples")
best = int(scores.mean(0).argmax())
off, count = offsets[best].most_common(1)[0]
print(f"\nTop head by EAP-IG: L1H{best}; its map points at offset {off:+d} in {count}/{N_EXAMPLES} examples "
      f"({'the copied token itself' if off == 0 else 'the token after the copied one' if off == 1 else 'elsewhere'}).")

# %% [markdown]
# ## A linear probe as the target (`zoo:agreement`)
# The shipped probe reads the subject's number from the last token's residual stream at
# `blocks.1.hook_resid_post`. One row, logit(singular) − logit(plural), is the target; the plan
# runs the model only up to the probe's hook. The ground truth is the subject noun (word 1).

# %%
agr = ma.load_model("zoo:agreement")
zp = zoo.load_probe("agreement")
probe = lk.LinearProbe(zp.W[:, 0] - zp.W[:, 1], zp.b[0] - zp.b[1], hook=zp.hook, label="singular − plural")
print(probe, "| held-out accuracy:", zp.meta.get("heldout_accuracy"))
aex = zoo.get_task("agreement").examples(1, seed=0)[0]
print(aex.prompt, "| subject at token", aex.truth[0] + 1, "| probe score", float(probe.score(agr, aex.prompt)[0]))
probe_methods = ["integrated_gradients", "saliency", "occlusion"]
probe_res = {m: ma.attribute(agr, aex.prompt, probe, method=m) for m in probe_methods}
for m, r in probe_res.items():
    print(f"{m:>22}:", [(t, round(s, 3)) for _, t, s in r.top_k(3, by="abs")])
text, comp = lk.probe_view(probe_res["integrated_gradients"])

# %% [markdown]
# How often does each method put the subject first? (Ranked by |score|: the probe's sign follows
# the subject's number.) Compare with `1 / (number of words)`, a random ranking.

# %%
aexs = zoo.get_task("agreement").examples(N_EXAMPLES, seed=1)
for m in probe_methods:
    hits = sum(ma.attribute(agr, e.prompt, probe, method=m).top_k(1, by="abs")[0][0] == e.truth[0] + 1 for e in aexs)
    print(f"{m:>22}: subject ranked first in {hits}/{len(aexs)} prompts")
print(f"{'random ranking':>22}: {sum(1 / len(e.words) for e in aexs):.1f}/{len(aexs)} expected")

# %% [markdown]
# Heads can explain a probe too (`mode="gradient"`: the probe's gradient at each head output);
# layers after the probe's hook would score 0 (`layers_reached`).

# %%
ph = lk.token_head_map(agr, aex.prompt, probe, mode="gradient")
print("layers reached:", ph.diagnostics["layers_reached"])
per_head = ph.scores[:, :, 0].sum(-1)
for l, h in [(i // per_head.shape[1], i % per_head.shape[1]) for i in per_head.abs().flatten().argsort(descending=True)[:3].tolist()]:
    src = int(ph.scores[l, h, 0].abs().argmax())
    print(f"L{l}H{h}: total {float(per_head[l, h]):+.3f}, mostly from {ph.tokens[src]!r} (position {src})")

# %% [markdown]
# ## SAE features
# The shipped ReLU SAE reads `blocks.1.hook_resid_pre` (between the two layers). At the last
# position, `token_feature_map` takes the most active features and attributes each one's encoder
# pre-activation to the input tokens (input × gradient, one batched backward). With a target it
# also gives each feature's direct effect on it: `act_f · W_dec[f] · ∂target/∂resid`.

# %%
sae = zoo.load_sae("agreement")
verb = ma.Contrast(" is", " are")
fmap = lk.token_feature_map(agr, aex.prompt, sae, position=-1, k=5, target=verb)
fview = lk.feature_view(fmap)
effects = [e[0] for e in fmap.diagnostics["direct_effects"]]
for f, a, e in zip(fmap.params["features"], fmap.params["feature_acts"], effects):
    i = fmap.params["features"].index(f)
    top = fmap.tokens[int(fmap.scores[i, 0].abs().argmax())]
    print(f"feature {f:>3}: activation {a:.3f}, direct effect on is−are {e:+.3f}, top token {top!r}")

# %% [markdown]
# One feature as the target: `SAEFeature` works with every method. For an active feature,
# input × gradient of its activation is the same number as the map's row (the map scores the
# pre-activation, equal in gradient while the ReLU is open) — a check computed here.

# %%
fi = max(range(len(effects)), key=lambda i: abs(effects[i]))
feat = fmap.params["features"][fi]
fres = ma.attribute(agr, aex.prompt, lk.SAEFeature(sae, feat), method="input_x_gradient")
print(f"feature {feat} (largest |direct effect|):", fres.top_k(3, by="abs"))
gap = float((fres.token_scores() - fmap.scores[fi, 0]).abs().max())
print(f"max |SAEFeature ixg − map row| = {gap:.2e}")
fig_ig = ma.attribute(agr, aex.prompt, lk.SAEFeature(sae, feat), method="integrated_gradients", n_steps=16)
print("IG of the same feature:", fig_ig.top_k(3, by="abs"))

# %% [markdown]
# ## One offline page
# `linking_page` gathers the token × head maps (every layer), the feature table and the probe
# attributions into a standalone HTML file (circuitsvis, no network needed).

# %%
tmp = tempfile.mkdtemp()
out = lk.linking_page("zoo linking", heads=hm, features=fmap, probes=list(probe_res.values()),
                      path=os.path.join(tmp, "linking.html"))
print(f"page: {len(out) / 1e6:.2f} MB at {tmp}/linking.html")
