"""``mechattr circuit``: find a circuit for a task (or user pairs), check its faithfulness, and
write the graph page and the data (display contract JSON or MIB file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any, parents: list[argparse.ArgumentParser] = ()) -> None:
    """The ``circuit`` subcommand; ``parents``: the CLI's shared option groups (seed, model, quiet)."""
    c = sub.add_parser("circuit", help="edge attribution (EAP / EAP-IG / AtP*) on prompt pairs: the circuit at a budget, its faithfulness curve, a graph page",
                       parents=list(parents))
    c.add_argument("model", help="built-in name (see `mechattr models`), local HF dir, or Hub name")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=["ioi", "agreement", "capital", "greater_than"], help="a built-in offline task (pairs generated for the model's tokenizer)")
    src.add_argument("--pairs", default=None, help="a JSONL file: {\"clean\", \"corrupt\", \"target\"?, \"contrast\"?, \"kind\"?} per line")
    c.add_argument("--n", type=int, default=8, help="number of task pairs (default 8)")
    c.add_argument("--method", "-m", default="eap_ig_inputs", choices=["eap", "eap_ig_inputs", "eap_ig_activations", "atp_star"], help="edge scoring method (default eap_ig_inputs)")
    c.add_argument("--ig-steps", type=int, default=5, help="gradient points of the EAP-IG methods (default 5)")
    c.add_argument("--direction", default="denoise", choices=["denoise", "noise"], help="sign convention (default denoise, TransformerLens 4.3's)")
    c.add_argument("--budget", type=float, default=0.05, help="fraction of edges in the circuit, in (0, 1] (default 0.05)")
    c.add_argument("--mode", default="greedy", choices=["greedy", "topn"], help="circuit selection (default greedy from the logits, as EAP-IG/MIB)")
    c.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve (one forward per pair and budget batch)")
    c.add_argument("--html", default=None, help="write the circuit page here")
    c.add_argument("--json", default=None, help="write the display data (docs/circuits.md, graph data) here ('-' for stdout)")
    c.add_argument("--mib", default=None, help="write the EAP-IG/MIB circuit file here")
    c.add_argument("--save", default=None, help="save the edge scores (safetensors + JSON) here")
    c.set_defaults(func=cmd_circuit)


def cmd_circuit(args: argparse.Namespace) -> int:
    import mechattr as ma
    from . import tasks
    from .._io import atomic_write
    from .display import write_circuit_page
    from .select import n_for_budget

    model = ma.load_model(args.model, kind=args.kind_model, device=args.device)
    pairs = tasks.make(args.task, model, n=args.n, seed=args.seed) if args.task else tasks.load_pairs(args.pairs)
    n_for_budget(ma.circuits.graph(model), args.budget, None)  # fail before the expensive part
    res = ma.circuits.edge_attribution(model, pairs, method=args.method, ig_steps=args.ig_steps, direction=args.direction)
    circuit = res.circuit(args.budget, mode=args.mode)
    faith = ma.circuits.faithfulness(model, circuit, pairs)
    curve = None if args.no_curve else ma.circuits.faithfulness_curve(model, res, pairs, mode=args.mode)
    title = f"{args.method} circuit of {args.task or Path(args.pairs).name} on {args.model}"
    data = res.to_graph_data(args.budget, title=title, faithfulness=curve, mode=args.mode)
    if args.json:
        text = json.dumps(data)
        if args.json == "-":
            print(text)
        else:
            atomic_write(Path(args.json), text.encode("utf-8"))
    if args.html:
        write_circuit_page(data, args.html)
    if args.mib:
        res.save_mib_json(args.mib, budget=args.budget, mode=args.mode)
    if args.save:
        res.save(args.save)
    if not args.quiet and args.json != "-":
        print(f"model: {args.model}  pairs: {len(pairs)}  edges: {res.graph.n_edges}  method: {args.method}  direction: {args.direction}")
        print(f"metric: clean {res.metric_clean:.4g}  corrupt {res.metric_corrupt:.4g}")
        print(f"circuit at budget {args.budget:g}: {len(circuit)} edges, faithfulness {faith.f:.3f}")
        if curve is not None:
            print(f"CPR {curve.cpr:.3f}  CMD {curve.cmd:.3f}")
        for w, r, s in res.top_edges(10):
            print(f"  {w}->{r}  {s:+.4g}")
        for k, v in (("html", args.html), ("json", args.json), ("mib", args.mib), ("save", args.save)):
            if v:
                print(f"{k}: {v}")
    return 0
