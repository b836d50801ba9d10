"""Is "<= 5 % of the edges recovers >= 0.9" attainable on zoo:induction? An exhaustive answer.

Every circuit of at most ``--max-edges`` edges that pruning leaves unchanged is enumerated
(:func:`mechattr.circuits.enumerate_circuits`; under corrupt ablation any other edge set has the f
of its pruned version, so these are all the candidates) and its faithfulness computed exactly on
the test's pairs (8 zoo induction pairs, seed 0, logit metric). Then, for each edge-scoring method,
the faithfulness of the circuit it finds at that size and the smallest circuit it finds with
f >= 0.9.

Usage: OMP_NUM_THREADS=1 python scripts/circuits_induction_optimum.py [--max-edges 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import mechattr as ma  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-edges", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = ma.load_model("zoo:induction")
    g = ma.circuits.graph(model)
    pairs = ma.circuits.tasks.zoo_pairs("induction", args.pairs)
    t0 = time.perf_counter()
    circuits = ma.circuits.enumerate_circuits(g, args.max_edges)
    f = ma.circuits.faithfulness_many(model, circuits, pairs, kind="logit")
    secs = time.perf_counter() - t0
    sizes = torch.tensor([int(c.sum()) for c in circuits])
    best_by_size = {k: float(f[sizes <= k].max()) for k in range(1, args.max_edges + 1) if bool((sizes <= k).any())}
    top = torch.argsort(f, descending=True)[:5].tolist()
    out: dict = {
        "model": "zoo:induction", "n_edges": g.n_edges, "pairs": args.pairs, "max_edges": args.max_edges,
        "n_circuits": len(circuits), "seconds": round(secs, 1),
        "best_f_by_size": best_by_size,
        "top": [{"f": float(f[i]), "edges": sorted(f"{g.writers[w]}->{g.readers[r]}" for w, r in circuits[i].nonzero().tolist())}
                for i in top],
        "methods": [],
    }
    print(f"{len(circuits)} circuits of <= {args.max_edges} edges (of {g.n_edges}), {secs:.1f} s")
    print("best f with <= k edges:", {k: round(v, 4) for k, v in best_by_size.items()})
    for t in out["top"]:
        print(f"  f = {t['f']:.4f}  {t['edges']}")
    for method, steps in (("eap", 1), ("eap_ig_inputs", 5), ("eap_ig_inputs", 20), ("eap_ig_activations", 5), ("atp_star", 1)):
        res = ma.circuits.edge_attribution(model, pairs, kind="logit", method=method, ig_steps=steps)
        row: dict = {"method": method, "ig_steps": steps}
        for mode in ("greedy", "topn"):
            cs = [ma.circuits.select_edges(g, res.scores, n_edges=n, mode=mode) for n in range(1, g.n_edges + 1)]
            fs = ma.circuits.faithfulness_many(model, cs, pairs, kind="logit").tolist()
            first = next((i for i, v in enumerate(fs) if v >= 0.9), None)
            row[mode] = {
                "f_at_max_edges": fs[args.max_edges - 1],
                "edges_at_max_edges": int(cs[args.max_edges - 1].sum()),
                "smallest_with_f_ge_0.9": None if first is None else int(cs[first].sum()),
            }
        out["methods"].append(row)
        print(method, steps, json.dumps({k: v for k, v in row.items() if k in ("greedy", "topn")}))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
