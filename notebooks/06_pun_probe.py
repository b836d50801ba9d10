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
# # Which words make a pun punny? A probe's score as the target
#
# Attribution does not have to explain a next-token logit. Here the target is a **linear probe**:
# a logistic-regression direction in the residual stream that separates puns from literal
# sentences. We
#
# 1. write a small labelled set of puns and literal sentences (no pun dataset is available
#    offline, so the sentences below were written for this notebook);
# 2. collect the residual stream of one layer at the last token and fit the probe with torch;
# 3. wrap it as a `LinearProbe` target and attribute its score with integrated gradients,
#    input × gradient and attention rollout;
# 4. measure how much the methods agree, delete each method's top-3 tokens versus its 3 lowest
#    and watch the probe score, and plot attribution against single-token ablation.
#
# **Caveat, stated up front.** The probe is fit on a few dozen hand-written sentences. Its
# held-out accuracy is computed below on a handful of sentences and is a noisy number; a probe
# this small can latch onto surface cues (sentence endings, particular words) rather than
# "punniness". Treat the attributions as explaining *this probe*, not puns in general.
#
# **Model choice.** SmolLM2-135M when it loads; otherwise the random `tiny-gpt2`, where every step
# runs but the probe has nothing to find. `MECHATTR_NOTEBOOK_MODEL` overrides (CI uses the tiny
# model, with fewer IG steps and fewer puns).

# %%
import os

import torch

import mechattr as ma
import mechattr.linking as lk
from mechattr import plots
from mechattr.linking.probes import fit_logistic
from mechattr.validation import spearman

MODEL_NAME = os.environ.get("MECHATTR_NOTEBOOK_MODEL", "smollm2-135m")
try:
    model = ma.load_model(MODEL_NAME)
except Exception as e:
    print(f"{MODEL_NAME} did not load ({e}); falling back to tiny-gpt2")
    MODEL_NAME = "tiny-gpt2"
    model = ma.load_model(MODEL_NAME)
print("model:", MODEL_NAME)
FAST = bool(os.environ.get("MECHATTR_NOTEBOOK_MODEL"))
adapter = ma.as_adapter(model)

# %% [markdown]
# ## A small labelled set
# Twenty puns and twenty literal sentences. Most literal sentences reuse the opening of a pun and
# end plainly, so the two classes differ mainly where the joke is.

# %%
PUNS = [
    "I used to be a banker but I lost interest.",
    "I am reading a book about anti-gravity and I cannot put it down.",
    "The math teacher called in sick with algebra.",
    "A bicycle cannot stand on its own because it is two tired.",
    "I wondered why the ball kept getting bigger, then it hit me.",
    "Time flies like an arrow; fruit flies like a banana.",
    "The baker stopped making doughnuts because he was tired of the hole thing.",
    "I used to be a shoe salesman until they gave me the boot.",
    "The scarecrow won an award because he was outstanding in his field.",
    "I am on a seafood diet: I see food and I eat it.",
    "A boiled egg every morning is hard to beat.",
    "The tailor kept his job because he was well suited for it.",
    "The calendar maker was fired because he took too many days off.",
    "The electrician said the news came as a real shock.",
    "I tried to catch fog yesterday, but I mist.",
    "The skeleton stayed home because he had no body to go with.",
    "The astronaut broke up with her partner because she needed space.",
    "The cross-eyed teacher could not control his pupils.",
    "The dentist gave a speech that was full of drill.",
    "The gardener was nervous because he had a lot of thyme on his hands.",
]
LITERAL = [
    "I used to be a banker but I moved to a new city.",
    "I am reading a book about gardening and I like it a lot.",
    "The math teacher called in sick with a bad cold.",
    "A bicycle needs a kickstand to stay upright when parked.",
    "I wondered why the ball was flat, then I found a hole.",
    "Time passes quickly when you are busy at work.",
    "The baker stopped making doughnuts because sales were low.",
    "I used to be a shoe salesman before I became a nurse.",
    "The farmer won an award for the best tomatoes in the county.",
    "I am on a diet, so I eat more vegetables now.",
    "A boiled egg every morning is a healthy breakfast.",
    "The tailor kept his job because he worked carefully.",
    "The calendar maker was fired because the dates were printed wrong.",
    "The electrician fixed the wiring in the kitchen.",
    "I tried to go jogging yesterday, but it was raining.",
    "The student stayed home because he had an exam the next day.",
    "The astronaut trained for two years before the launch.",
    "The teacher asked her pupils to open their books.",
    "The dentist cleaned my teeth and booked another visit.",
    "The gardener planted tomatoes along the fence in May.",
]
sentences = PUNS + LITERAL
labels = torch.tensor([1.0] * len(PUNS) + [0.0] * len(LITERAL))
print(len(PUNS), "puns,", len(LITERAL), "literal sentences")

# %% [markdown]
# ## Residual stream at the last token
# One layer in the middle of the network, `blocks.{L}.hook_resid_post`; the last token is the
# final period, which has read the whole sentence. All sentences go through the model in one batch,
# padded on the right: a causal model's activations at a real token never see the padding after it.

# %%
LAYER = adapter.n_layers // 2
HOOK = f"blocks.{LAYER}.hook_resid_post"
seqs = [adapter.tokenize(s)[0] for s in sentences]
lengths = torch.tensor([len(t) for t in seqs])
batch = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=int(seqs[0][-1]))
with torch.no_grad():
    feats = adapter.run_until(batch, HOOK)[torch.arange(len(seqs)), lengths - 1].float()
print("features:", tuple(feats.shape), "at", HOOK)

# %% [markdown]
# ## Fit a logistic-regression probe with torch
# Held-out split: 6 puns and 6 literal sentences never seen in training (pairs that share an
# opening go to the same side, so the test sentences are new sentences, not new endings). Features
# are standardised with the training statistics; an L2 penalty keeps the weights small, since there
# are far more dimensions than sentences. The standardisation is then folded into the probe's
# weight and bias, so the probe reads the raw residual stream.

# %%
STEPS = 100 if FAST else 300


def fit_probe(x: torch.Tensor, y: torch.Tensor, steps: int = STEPS, l2: float = 1e-2, seed: int = 0):
    """Logistic regression on standardised features; returns (weight, bias) on the raw features."""
    return fit_logistic(x, y, steps=steps, l2=l2, seed=seed)


perm = torch.randperm(len(PUNS), generator=torch.Generator().manual_seed(0))
test_pairs = perm[:6]
is_test = torch.zeros(len(sentences), dtype=torch.bool)
is_test[test_pairs] = True
is_test[test_pairs + len(PUNS)] = True
w, b = fit_probe(feats[~is_test], labels[~is_test])
pred = (feats @ w + b > 0).float()
train_acc = float((pred[~is_test] == labels[~is_test]).float().mean())
test_acc = float((pred[is_test] == labels[is_test]).float().mean())
print(f"train accuracy {train_acc:.2f} on {int((~is_test).sum())} sentences; "
      f"held-out accuracy {test_acc:.2f} on {int(is_test.sum())} sentences (chance 0.50)")

# %% [markdown]
# Twelve test sentences make a coarse estimate. Leave-one-pair-out cross-validation (refit without
# a pun and its literal partner, predict both) uses every sentence once as a test case.

# %%
cv_pairs = range(len(PUNS)) if not FAST else range(2)
correct = 0
for i in cv_pairs:
    keep = torch.ones(len(sentences), dtype=torch.bool)
    keep[[i, i + len(PUNS)]] = False
    wi, bi = fit_probe(feats[keep], labels[keep])
    correct += int(((feats[~keep] @ wi + bi > 0).float() == labels[~keep]).sum())
cv_acc = correct / (2 * len(cv_pairs))
print(f"leave-one-pair-out accuracy {cv_acc:.2f} over {2 * len(cv_pairs)} predictions")

# %% [markdown]
# ## The probe as an attribution target
# `LinearProbe(weight, bias, hook)` reads `resid · weight + bias` at the last position (the
# default). Its plan runs the model only up to `HOOK`. A quick check that the target computes the
# same logit as the fitted probe:

# %%
probe = lk.LinearProbe(w, b, hook=HOOK, label="pun logit")
gap = max(abs(float(probe.score(model, s)[0]) - float(feats[i] @ w + b)) for i, s in enumerate(sentences[:3]))
print(probe, f"| max |target − fitted logit| on 3 sentences: {gap:.2e}")

# %% [markdown]
# ## Three methods on a few puns
# Integrated gradients (Sundararajan et al. 2017), input × gradient and attention rollout (Abnar &
# Zuidema 2020). Rollout is layered: we read it at the probe's layer, since later layers never run
# for this target. IG runs at its defaults: the adaptive rule refines the path until the
# completeness error is within 1% (or its budget is spent), and `baseline="auto"` replaces the zero
# embedding by the pad token's on SmolLM2, where an all-zero input is a degenerate point (see
# docs/smollm2.md). The printed completeness error says how far IG's scores are from summing to
# f(x) − f(baseline) here; a large one means the IG numbers below are not what IG promises. Rollout's share on the first token is printed too: a model that
# parks attention on its first token (an attention sink) makes rollout point there.

# %%
SHOW = [0, 3, 8] if not FAST else [0, 3]
IG_STEPS = 16 if FAST else 64


def explain(text: str) -> dict[str, ma.Attribution]:
    ig = ma.attribute(model, text, probe, method="integrated_gradients", n_steps=IG_STEPS)
    ixg = ma.attribute(model, text, probe, method="input_x_gradient")
    roll = ma.attribute(model, text, probe, method="attention_rollout").at_layer(LAYER)
    return {"IG": ig, "input×grad": ixg, "rollout": roll}


explained = {i: explain(PUNS[i]) for i in SHOW}
for i, res in explained.items():
    print(f"\n{PUNS[i]!r}  probe logit {float(probe.score(model, PUNS[i])[0]):+.2f}")
    for name, r in res.items():
        print(f"  {name:>10}:", [(t, round(s, 3)) for _, t, s in r.top_k(3)])
    print(f"  IG completeness error {res['IG'].diagnostics.get('completeness_relative_error', float('nan')):.3g} (relative)")
    roll = res["rollout"].token_scores()
    print(f"  rollout share on the first token: {float(roll[0] / roll.sum()):.2f}")
view = ma.compare(list(explained[SHOW[0]].values()))

# %% [markdown]
# ## Do the methods rank tokens alike?
# Spearman correlation of the token rankings, per pun, then averaged. BOS is left out: the gradient
# methods hold it fixed at 0, while rollout treats it as an ordinary position (attention sinks on
# it are part of what rollout measures), so including it would only add a tie.

# %%
names = list(explained[SHOW[0]])


def attributable(tokens: torch.Tensor) -> list[int]:
    """Every position except a prepended BOS."""
    first = 1 if adapter.prepend_bos and int(tokens[0]) == adapter.special_token_id("bos") else 0
    return list(range(first, tokens.shape[-1]))


mats = []
for i, res in explained.items():
    pos = attributable(adapter.tokenize(PUNS[i])[0])
    s = torch.stack([r.token_scores()[pos].double() for r in res.values()])  # method src
    mats.append(spearman(s[:, None, :], s[None, :, :]))
mean_mat = torch.stack(mats).nanmean(0)
for a in range(len(names)):
    print(f"{names[a]:>10}:", "  ".join(f"{names[b_]} {float(mean_mat[a, b_]):+.2f}" for b_ in range(len(names)) if b_ != a))
fig_agree = plots.agreement_matrix(mean_mat, labels=names, title="mean Spearman over the shown puns")

# %% [markdown]
# ## Ablation: top-3 versus the 3 lowest tokens
# Delete each method's 3 highest-scoring tokens (the ones it says push towards "pun") and, in a
# separate run, its 3 lowest-scoring ones, then re-read the probe. The read position (the final
# period) and BOS are never deleted, so the ranking is taken over the other tokens. If a method's
# ranking is faithful to the probe, deleting its top-3 should lower the score more than deleting
# its bottom-3. Look at the sign and size of the gap per method.

# %%
def free_positions(tokens: torch.Tensor) -> list[int]:
    """Deletable positions: not BOS, not the read position."""
    return attributable(tokens)[:-1]


def score_without(tokens: torch.Tensor, drop: list[int]) -> float:
    keep = torch.ones(tokens.shape[-1], dtype=torch.bool)
    keep[drop] = False
    return float(probe.score(model, tokens[keep])[0])


gaps: dict[str, list[float]] = {n: [] for n in names}
for i, res in explained.items():
    toks = adapter.tokenize(PUNS[i])[0]
    full = float(probe.score(model, toks)[0])
    cand = free_positions(toks)
    for n, r in res.items():
        s = r.token_scores()[cand]
        order = [cand[j] for j in torch.argsort(s, descending=True).tolist()]
        top, low = order[:3], order[-3:]
        d_top, d_low = full - score_without(toks, top), full - score_without(toks, low)
        gaps[n].append(d_top - d_low)
        print(f"{n:>10} on pun {i}: delete top-3 {[r.tokens[p] for p in top]} -> drop {d_top:+.2f}; "
              f"lowest-3 {[r.tokens[p] for p in low]} -> drop {d_low:+.2f}")
for n in names:
    g = torch.tensor(gaps[n])
    print(f"{n:>10}: drop(top-3) − drop(lowest-3) = {float(g.mean()):+.2f} on average; "
          f"top-3 hurts more in {int((g > 0).sum())}/{len(g)} puns")

# %% [markdown]
# ## Attribution versus single-token ablation
# Occlusion with `replacement="delete"` gives, for every token, f(x) − f(x without that token).
# Each point is one token of one shown pun; the title gives the Spearman correlation.

# %%
xs, ys, labs = {n: [] for n in names}, [], []
for i, res in explained.items():
    occ = ma.attribute(model, PUNS[i], probe, method="occlusion", replacement="delete")
    cand = free_positions(adapter.tokenize(PUNS[i])[0])
    ys += occ.token_scores()[cand].tolist()
    labs += [occ.tokens[p] for p in cand]
    for n, r in res.items():
        xs[n] += r.token_scores()[cand].tolist()
fig_scatter = plots.ablation_scatter(xs["IG"], ys, labels=labs, title="IG vs deletion effect")
for n in names:
    rho = float(spearman(torch.tensor(xs[n]), torch.tensor(ys)))
    print(f"{n:>10}: Spearman(attribution, single-token deletion effect) = {rho:+.2f} over {len(ys)} tokens")

# %% [markdown]
# ## What to take away
# - The held-out and cross-validated accuracies above say how much of a "pun direction" the probe
#   found on this model; with the random `tiny-gpt2` they sit near chance and everything after is
#   an exercise of the code, not a finding.
# - Where the methods' rankings correlate poorly, at most one of them can be right about which
#   words matter; the ablation gaps and the scatter are the evidence for which one tracks the
#   probe's behaviour under deletion.
# - A probe fit on 28 sentences can separate the classes by cues that are not the joke; check the
#   top tokens against the pun words (e.g. "interest", "tired", "field") before reading more into them.
