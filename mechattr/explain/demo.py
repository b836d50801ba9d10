"""What ``make demo`` / ``mechattr demo`` runs: ``explain`` on three examples.

1. Factual recall, with a counterfactual prompt: "The capital of France is" → " Paris", and
   "The capital of Italy is" for the heads that carry the difference.
2. Subject–verb agreement as a contrast: "The key to the cabinets" → " is" versus " are".
3. The pun probe of ``notebooks/06_pun_probe.py``: a logistic-regression probe on the residual
   stream at the middle layer, fitted on 20 of that notebook's hand-written puns and literal
   sentences, explained on a pun it was not fitted on (and classifies correctly; see PUN_PROMPT). The probe is small and noisy (see the
   notebook's caveat); the page explains this probe, not puns in general.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

# A subset of notebook 06's sentences (pairs share an opening; the last pun is held out).
PUNS = [
    "I used to be a banker but I lost interest.",
    "The math teacher called in sick with algebra.",
    "A bicycle cannot stand on its own because it is two tired.",
    "I used to be a shoe salesman until they gave me the boot.",
    "The scarecrow won an award because he was outstanding in his field.",
    "A boiled egg every morning is hard to beat.",
    "The tailor kept his job because he was well suited for it.",
    "The electrician said the news came as a real shock.",
    "The astronaut broke up with her partner because she needed space.",
    "The cross-eyed teacher could not control his pupils.",
]
LITERAL = [
    "I used to be a banker but I moved to a new city.",
    "The math teacher called in sick with a bad cold.",
    "A bicycle needs a kickstand to stay upright when parked.",
    "I used to be a shoe salesman before I became a nurse.",
    "The farmer won an award for the best tomatoes in the county.",
    "A boiled egg every morning is a healthy breakfast.",
    "The tailor kept his job because he worked carefully.",
    "The electrician fixed the wiring in the kitchen.",
    "The astronaut trained for two years before the launch.",
    "The teacher asked her pupils to open their books.",
]
# Held out from the fit. The probe scores 5 of 8 held-out puns of notebook 06 as puns (the
# gardener, fog and seafood puns come out negative); the demo explains one it gets right, with its
# literal partner ("The dentist cleaned my teeth and booked another visit.") scored negative.
PUN_PROMPT = "The dentist gave a speech that was full of drill."


def fit_pun_probe(model: Any, steps: int = 200, l2: float = 1e-2, seed: int = 0) -> Any:
    """A ``LinearProbe`` (pun vs literal) at the middle layer's residual stream, last token."""
    import mechattr as ma
    from ..linking import LinearProbe
    from ..linking.probes import fit_logistic

    adapter = ma.as_adapter(model)
    from ..tl import hooks as hk

    hook = hk.resid_post(adapter.n_layers // 2)
    sents = PUNS + LITERAL
    y = torch.tensor([1.0] * len(PUNS) + [0.0] * len(LITERAL))
    seqs = [adapter.tokenize(s)[0] for s in sents]
    lengths = torch.tensor([len(t) for t in seqs])
    # Right padding: a causal model's activations at a real token never see the padding after it.
    batch = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=int(seqs[0][-1]))
    with torch.no_grad(), adapter.guard():
        x = adapter.run_until(batch, hook)[torch.arange(len(seqs)), lengths - 1].float()
    w, b = fit_logistic(x, y, steps=steps, l2=l2, seed=seed)
    return LinearProbe(w, b, hook=hook, label="pun logit")


def examples(model: Any) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("recall", "The capital of France is", {"target": " Paris", "counterfactual": "The capital of Italy is"}),
        ("agreement", "The key to the cabinets", {"target": " is", "contrast": " are"}),
        ("pun", PUN_PROMPT, {"target": fit_pun_probe(model)}),
    ]


def run_demo(
    model: Any, out: str | Path, *, budget: str = "fast", seed: int = 0, quiet: bool = False, methods: Any = None
) -> list[Path]:
    """Explain the three examples; the first page is ``out``, the others ``out`` with a suffix."""
    from .core import explain

    out = Path(out)
    paths = []
    for i, (name, text, kw) in enumerate(examples(model)):
        t0 = time.perf_counter()
        ex = explain(model, text, budget=budget, seed=seed, methods=methods, **kw)
        path = out if i == 0 else out.with_name(f"{out.stem}-{name}{out.suffix}")
        ex.to_html(path)
        paths.append(path)
        if not quiet:
            print(f"[{name}] {time.perf_counter() - t0:.1f} s\n{ex.summary()}\nwrote {path}\n")
    return paths
