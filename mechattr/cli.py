"""Command line: ``mechattr attribute | attribute-dataset | validate | report | methods | models | demo | circuit``.

Exit codes: 0 success, 1 an unexpected internal error, 2 bad usage or input (a MechattrError),
130 interrupted. Errors print one line without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parse_value(text: str) -> Any:
    """--param values: Python/JSON literals when they parse (50, 0.1, [1, 2], 'x'), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _params(pairs: Sequence[str]) -> dict[str, Any]:
    from .errors import InputError

    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise InputError(f"--param takes KEY=VALUE, got {p!r} (e.g. --param n_steps=64).")
        k, v = p.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


def _target(args: argparse.Namespace) -> Any:
    import mechattr as ma

    given = [x for x in (args.continuation, args.generate) if x is not None]
    if len(given) > 1 or (given and (args.target is not None or args.contrast is not None)):
        from .errors import InputError

        raise InputError("Use only one of --target/--contrast, --continuation, --generate.")
    if args.continuation is not None:
        return ma.ForcedContinuation(args.continuation, kind=args.kind or "log_prob")
    if args.generate is not None:
        return ma.Generate(args.generate, kind=args.kind or "log_prob")
    return args.target


def _print_table(res: Any, out: Any) -> None:
    final = res.final()
    print(f"model: {res.model_name}   method: {res.method}   target: {res.target_description}", file=out)
    width = max(len(repr(t)) for t in final.tokens)
    header = " ".join(f"{t!r:>12}"[:12] for t in final.targets)
    print(f"{'pos':>4} {'token':<{width}} {header}", file=out)
    for i, tok in enumerate(final.tokens):
        vals = " ".join(f"{float(final.token_scores(j)[i]):>12.4g}" for j in range(len(final.targets)))
        print(f"{i:>4} {tok!r:<{width}} {vals}", file=out)
    for k in ("completeness_error", "completeness_relative_error", "seconds"):
        if k in res.diagnostics:
            print(f"{k}: {res.diagnostics[k]:.4g}", file=out)


def _run_kwargs(args: argparse.Namespace) -> dict:
    """The options `attribute` and `attribute-dataset` share, as keywords for the API call."""
    return dict(
        contrast=args.contrast,
        kind=args.kind,
        position=args.position,
        seed=args.seed,
        memory_mb=args.memory_mb,
        batch_size=args.batch_size,
        **_params(args.param),
    )


def cmd_attribute(args: argparse.Namespace) -> int:
    import mechattr as ma

    model = ma.load_model(args.model, kind=args.kind_model, device=args.device)
    res = ma.attribute(
        model,
        args.text,
        _target(args),
        method=args.method,
        **_run_kwargs(args),
    )
    if args.html:
        res.to_html(args.html)
    if args.save:
        res.save(args.save)
    if args.json:
        if args.json == "-":
            print(res.to_json())
        else:
            res.to_json(args.json)
    if args.json != "-" and not args.quiet:
        _print_table(res, sys.stdout)
        for label, path in (("html", args.html), ("saved", args.save), ("json", args.json)):
            if path:
                print(f"{label}: {path}")
    return EXIT_OK


def _rank_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU: plain 'cuda' becomes cuda:$LOCAL_RANK."""
    import os

    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def cmd_attribute_dataset(args: argparse.Namespace) -> int:
    import mechattr as ma

    model = ma.load_model(args.model, kind=args.kind_model, device=_rank_device(args.device))
    run = ma.attribute_dataset(
        model,
        args.prompts,
        args.target,
        method=args.method,
        out_dir=args.out,
        shard_size=args.shard_size,
        resume=not args.no_resume,
        quiet=args.quiet or args.json,
        **_run_kwargs(args),
    )
    if run.rank != 0:  # rank 0 speaks for the job; its summary counts every rank
        return EXIT_OK
    if args.json:
        print(json.dumps(run.to_dict(), indent=2))
    elif not args.quiet:
        print(f"{run.n_items} items in {run.n_shards} shards in {run.out_dir}")
    return EXIT_OK


def cmd_methods(args: argparse.Namespace) -> int:
    import mechattr as ma

    methods = ma.list_methods()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "aliases": list(m.aliases),
                        "family": m.family,
                        "summary": m.summary,
                        "parameters": {k: repr(v) for k, v in m.parameters().items()},
                    }
                    for m in methods
                ],
                indent=2,
            )
        )
        return EXIT_OK
    w = max(len(m.name) for m in methods)
    for m in methods:
        alias = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        print(f"{m.name:<{w}}  [{m.family}] {m.summary}{alias}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    import mechattr as ma

    models = ma.builtin_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return EXIT_OK
    for name, summary in models.items():
        print(f"{name:<24} {summary}")
    print("\nAlso: a local Hugging Face model directory, or a Hub name such as 'gpt2' (needs network).")
    return EXIT_OK


def _read_prompts(path: str) -> list[str]:
    """One prompt per line (blank lines skipped), or a JSON list of strings."""
    from .errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"No prompts file at {path!r}.")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path!r} looks like JSON but does not parse: {e}") from e
        if not all(isinstance(x, str) for x in prompts):
            raise InputError(f"{path!r} must hold a JSON list of strings.")
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{path!r} holds no prompts.")
    return prompts


def cmd_validate(args: argparse.Namespace) -> int:
    import mechattr as ma

    prompts = _read_prompts(args.prompts) if args.prompts else [args.text]
    model = ma.load_model(args.model, kind=args.kind_model, device=args.device)
    checks = "all" if args.checks == "all" else [c.strip() for c in args.checks.split(",") if c.strip()]
    report = ma.validate(
        model,
        prompts,
        target=args.target,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        checks=checks,
        seed=args.seed,
        html_path=args.html,
        **_params(args.option),
    )
    if args.json:
        text = report.to_json()
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    if args.json != "-" and not args.quiet:
        print(report.to_markdown())
        if args.html:
            print(f"html: {args.html}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    import mechattr as ma
    from .report import report

    model = ma.load_model(args.model, kind=args.kind_model, device=args.device)
    opts = {k: v for k, v in (("contrast", args.contrast), ("kind", args.kind), ("position", args.position)) if v is not None}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report(model, args.text, args.target, methods, path=args.out, validate=args.validate,
           seed=args.seed, figures=False if args.no_figures else None, **opts)
    if not args.quiet:
        print(f"wrote {args.out}")
    return EXIT_OK


DEMO_PROMPTS = [
    ("The capital of France is", {"target": " Paris"}),
    ("The keys to the cabinet", {"target": " are", "contrast": " is"}),
]


def cmd_demo(args: argparse.Namespace) -> int:
    """Attribute the demo prompts with several methods and write one offline HTML page."""
    import mechattr as ma
    from .display import html_page

    model = ma.load_model(args.model)
    results = []
    for text, tgt in DEMO_PROMPTS:
        for method in args.methods.split(","):
            info = ma.get_method(method.strip())
            try:
                res = ma.attribute(model, text, method=info.name, seed=args.seed, **tgt)
            except ma.TargetError as e:  # e.g. a tokenizer where ' Paris' is two tokens
                print(f"skipped {text!r} {tgt}: {e}", file=sys.stderr)
                break
            results.append(res)
            if not args.quiet:
                top = ", ".join(f"{t!r} {s:+.3g}" for _, t, s in res.top_k(3))
                err = res.diagnostics.get("completeness_relative_error")
                note = f" (completeness error {100 * err:.1f}% of f(x) - f(b))" if err is not None else ""
                print(f"{res.method:<22} {text!r} -> {res.targets[0]}: top {top}{note}")
    out = Path(args.out)
    html_page(results, path=out, title=f"mechattr demo — {ma.as_adapter(model).name}")
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, opens offline)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .tl.loading import DEFAULT_MODEL

    p = argparse.ArgumentParser(
        prog="mechattr",
        description="Input attribution for TransformerLens models.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad usage or input, 130 interrupted.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attribute", help="attribute a model's output to its input tokens")
    a.add_argument("model", help=f"built-in name (see `mechattr models`, e.g. {DEFAULT_MODEL}), local HF dir, or Hub name")
    a.add_argument("text", help="the prompt")
    a.add_argument("--method", "-m", default="integrated_gradients", help="method name or alias (see `mechattr methods`); default integrated_gradients")
    a.add_argument("--target", "-t", default=None, help="the next token to explain, e.g. ' Paris' (default: the model's own prediction)")
    a.add_argument("--contrast", "-c", default=None, help="a foil token: explain target vs foil (logit difference by default)")
    a.add_argument("--continuation", default=None, help="force this continuation and attribute each of its tokens")
    a.add_argument("--generate", type=int, default=None, help="greedily generate N tokens and attribute each")
    a.add_argument("--kind", default=None, help="log_prob (default), prob, logit; for contrasts logit_diff, log_prob_diff, prob_diff")
    a.add_argument("--position", type=int, default=None, help="prompt position whose prediction is explained (default: last)")
    a.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="a method parameter, repeatable: -p n_steps=64 -p baseline=pad")
    a.add_argument("--seed", type=int, default=0, help="seed for stochastic methods (default 0)")
    a.add_argument("--memory-mb", type=float, default=2048.0, help="activation memory cap per batch in MiB (default 2048)")
    a.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (overrides --memory-mb)")
    a.add_argument("--kind-model", default="auto", choices=["auto", "bridge", "hooked"], help="TransformerBridge or HookedTransformer (TL 3 only)")
    a.add_argument("--device", default="cpu", help="torch device (default cpu)")
    a.add_argument("--html", default=None, help="write an offline HTML page here")
    a.add_argument("--json", default=None, help="write the result as JSON here ('-' for stdout)")
    a.add_argument("--save", default=None, help="save the result (safetensors + JSON metadata) here")
    a.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    a.set_defaults(func=cmd_attribute)

    ds = sub.add_parser("attribute-dataset", help="attribute every prompt of a file, streaming resumable shards to a directory (runs data-parallel under torchrun)")
    ds.add_argument("prompts", help="a .jsonl file (strings or {\"text\", \"target\", \"contrast\"} objects a line), a JSON list, or plain text with one prompt a line")
    ds.add_argument("--model", required=True, help="built-in name (see `mechattr models`), local HF dir, or Hub name")
    ds.add_argument("--method", "-m", default="integrated_gradients", help="method name or alias (see `mechattr methods`); default integrated_gradients")
    ds.add_argument("--out", "-o", required=True, help="output directory: manifest.json and one shard-NNNNN.safetensors per shard")
    ds.add_argument("--target", "-t", default=None, help="the next token to explain for every prompt without its own (default: the model's own prediction)")
    ds.add_argument("--contrast", "-c", default=None, help="a foil token for every prompt without its own")
    ds.add_argument("--kind", default=None, help="log_prob (default), prob, logit; for contrasts logit_diff, log_prob_diff, prob_diff")
    ds.add_argument("--position", type=int, default=None, help="prompt position whose prediction is explained (default: last)")
    ds.add_argument("--shard-size", type=int, default=64, help="items per shard file, the unit of resuming and of splitting over ranks (default 64)")
    ds.add_argument("--no-resume", action="store_true", help="delete the shards already in --out and start over (default: skip finished shards)")
    ds.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="a method parameter, repeatable: -p n_steps=64")
    ds.add_argument("--seed", type=int, default=0, help="seed for stochastic methods (default 0)")
    ds.add_argument("--memory-mb", type=float, default=2048.0, help="activation memory cap per batch in MiB (default 2048)")
    ds.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (overrides --memory-mb)")
    ds.add_argument("--kind-model", default="auto", choices=["auto", "bridge", "hooked"], help="TransformerBridge or HookedTransformer (TL 3 only)")
    ds.add_argument("--device", default="cpu", help="torch device (default cpu); 'cuda' under torchrun means cuda:$LOCAL_RANK")
    ds.add_argument("--json", action="store_true", help="print the run summary (items, shards, items/s) as JSON")
    ds.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    ds.set_defaults(func=cmd_attribute_dataset)

    v = sub.add_parser("validate", help="sanity checks, faithfulness curves and agreement for several methods")
    v.add_argument("model", help="model name or directory, as for `attribute`")
    v.add_argument("text", nargs="?", default=None, help="one prompt (or use --prompts FILE)")
    v.add_argument("--prompts", default=None, help="a file with one prompt per line, or a JSON list of strings")
    v.add_argument("--target", "-t", default=None, help="the next token to explain (default: the model's own prediction)")
    v.add_argument("--methods", default="integrated_gradients,input_x_gradient,saliency", help="comma-separated methods to check")
    v.add_argument("--checks", default="all", help="'all' or comma-separated: randomization, data_randomization, completeness, perturbation, agreement, ablation, roar, ground_truth")
    v.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="a validate() option, repeatable: -o threshold=0.4 -o replacement='delete'")
    v.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    v.add_argument("--kind-model", default="auto", choices=["auto", "bridge", "hooked"], help="TransformerBridge or HookedTransformer (TL 3 only)")
    v.add_argument("--device", default="cpu", help="torch device (default cpu)")
    v.add_argument("--html", default=None, help="write the offline HTML report here")
    v.add_argument("--json", default=None, help="write the report as JSON here ('-' for stdout)")
    v.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("report", help="write one offline HTML report: several methods, agreement, optional validation")
    r.add_argument("model", help="built-in name (see `mechattr models`), local HF dir, or Hub name")
    r.add_argument("text", help="the prompt")
    r.add_argument("--target", "-t", default=None, help="the next token to explain (default: the model's own prediction)")
    r.add_argument("--contrast", "-c", default=None, help="a foil token: explain target vs foil")
    r.add_argument("--kind", default=None, help="log_prob (default), prob, logit; for contrasts logit_diff, log_prob_diff, prob_diff")
    r.add_argument("--position", type=int, default=None, help="prompt position whose prediction is explained (default: last)")
    r.add_argument("--methods", default="integrated_gradients,input_x_gradient,saliency", help="comma-separated method names")
    r.add_argument("--validate", action="store_true", help="also run completeness, deletion/insertion curves, agreement and ablation checks")
    r.add_argument("--no-figures", action="store_true", help="leave out matplotlib figures even when matplotlib is installed")
    r.add_argument("--out", "-o", default="mechattr-report.html", help="output HTML file (default mechattr-report.html)")
    r.add_argument("--seed", type=int, default=0, help="seed for stochastic methods and validation (default 0)")
    r.add_argument("--kind-model", default="auto", choices=["auto", "bridge", "hooked"], help="TransformerBridge or HookedTransformer (TL 3 only)")
    r.add_argument("--device", default="cpu", help="torch device (default cpu)")
    r.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    r.set_defaults(func=cmd_report)

    m = sub.add_parser("methods", help="list the attribution methods, one line each")
    m.add_argument("--json", action="store_true", help="machine-readable output with parameters")
    m.set_defaults(func=cmd_methods)

    mo = sub.add_parser("models", help="list the built-in models")
    mo.add_argument("--json", action="store_true", help="machine-readable output")
    mo.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="attribute the demo prompts on the default model and write an HTML page")
    d.add_argument("--model", default=None, help="model (default: the built-in default model)")
    d.add_argument("--methods", default="integrated_gradients,input_x_gradient,saliency", help="comma-separated methods")
    d.add_argument("--out", default="mechattr-demo.html", help="output HTML file")
    d.add_argument("--seed", type=int, default=0, help="seed for stochastic methods (default 0)")
    d.add_argument("--quiet", "-q", action="store_true", help="print only the output file")
    d.set_defaults(func=cmd_demo)

    from .circuits.cli import add_parser as add_circuit_parser

    add_circuit_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "validate" and not (args.text or args.prompts):
        parser.error("validate needs a prompt or --prompts FILE")
    if getattr(args, "command", None) == "demo" and args.model is None:
        from .tl.loading import demo_model

        args.model = demo_model()
    from .errors import MechattrError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MechattrError as e:
        if args.debug:
            raise
        print(f"mechattr: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            raise
        print(f"mechattr: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
