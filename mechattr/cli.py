"""Command line: ``mechattr explain | attribute | attribute-dataset | validate | report | circuit | methods | models | demo``.

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
    for k in ("completeness_error", "completeness_relative_error", "conservation_relative_error_input", "seconds"):
        if k in res.diagnostics:
            print(f"{k}: {res.diagnostics[k]:.4g}", file=out)


def _run_kwargs(args: argparse.Namespace) -> dict:
    """The run options on the command line and the method's own parameters, as API keywords."""
    from .options import from_args

    return {**from_args(args), **_params(args.param)}


def cmd_attribute(args: argparse.Namespace) -> int:
    import mechattr as ma

    if args.baselines is not None:
        return _cmd_baselines(args)
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


def _cmd_baselines(args: argparse.Namespace) -> int:
    """``attribute --baselines zero,pad,mean``: the baseline sensitivity table of the method."""
    import mechattr as ma
    from .errors import InputError
    from .sensitivity import parse_baselines

    if args.save:
        raise InputError("--save stores one attribution; with --baselines use --json or --html.")
    if args.continuation is not None or args.generate is not None:
        raise InputError("--baselines explains one next token: use --target/--contrast, not --continuation/--generate.")
    baselines = parse_baselines(args.baselines)
    model = ma.load_model(args.model, kind=args.kind_model, device=args.device)
    sens = ma.baseline_sensitivity(model, args.text, args.target, method=args.method, baselines=baselines,
                                   **_run_kwargs(args))
    if args.html:
        sens.to_html(args.html)
    if args.json:
        if args.json == "-":
            print(sens.to_json())
        else:
            sens.to_json(args.json)
    if args.json != "-" and not args.quiet:
        print(sens.to_text())
        for label, path in (("html", args.html), ("json", args.json)):
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

    from ._cli_files import read_text

    text = read_text(path, "prompts file")
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
            from ._io import atomic_write as _atomic_write

            _atomic_write(Path(args.json), text.encode("utf-8"))  # creates missing directories, as --html does
    if args.json != "-" and not args.quiet:
        print(report.to_markdown())
        if args.html:
            print(f"html: {args.html}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    import mechattr as ma
    from .report import report

    model = ma.load_model(args.model, kind=args.kind_model, device=args.device)
    from .options import TARGET_OPTIONS, from_args

    opts = {k: v for k, v in from_args(args).items() if k in TARGET_OPTIONS and v is not None}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report(model, args.text, args.target, methods, path=args.out, validate=args.validate,
           seed=args.seed, figures=False if args.no_figures else None, **opts)
    if not args.quiet:
        print(f"wrote {args.out}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """``explain`` on the three demo examples (mechattr.explain.demo); one offline page each."""
    import time

    import mechattr as ma
    from .explain.demo import run_demo

    t0 = time.perf_counter()
    model = ma.load_model(args.model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    paths = run_demo(model, args.out, budget=args.budget, seed=args.seed, quiet=args.quiet, methods=methods)
    print(f"wrote {', '.join(str(p) for p in paths)} (open offline) in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    import mechattr as ma

    model = ma.load_model(args.model, kind=args.kind_model, device=args.device)
    ex = ma.explain(
        model, args.text, args.target, contrast=args.contrast, counterfactual=args.counterfactual,
        budget=args.budget, top_k=args.top_k, seed=args.seed,
    )
    if args.html:
        ex.to_html(args.html)
    if args.json:
        if args.json == "-":
            print(ex.to_json())
        else:
            ex.to_json(args.json)
    if args.json != "-" and not args.quiet:
        print(ex.summary())
        for label, path in (("html", args.html), ("json", args.json)):
            if path:
                print(f"{label}: {path}")
    return EXIT_OK


def _parents() -> dict[str, argparse.ArgumentParser]:
    """Option groups declared once and shared by the subcommands (argparse parents)."""
    from .options import cli_parent

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--kind-model", default="auto", choices=["auto", "bridge", "hooked"], help="TransformerBridge or HookedTransformer (TL 3 only)")
    model.add_argument("--device", default="cpu", help="torch device (default cpu); 'cuda' under torchrun means cuda:$LOCAL_RANK")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    params = argparse.ArgumentParser(add_help=False)
    params.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE", help="a method parameter, repeatable: -p n_steps=64 -p baseline=pad")
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", "-m", default="integrated_gradients", help="method name or alias (see `mechattr methods`); default integrated_gradients")
    return {
        "target": cli_parent("contrast", "kind", "position"),
        "batching": cli_parent("memory_mb", "batch_size"),
        "seed": cli_parent("seed"),
        "model": model,
        "quiet": quiet,
        "params": params,
        "method": method,
    }


def build_parser() -> argparse.ArgumentParser:
    from .tl.loading import DEFAULT_MODEL

    P = _parents()

    p = argparse.ArgumentParser(
        prog="mechattr",
        description="Input attribution for TransformerLens models.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 bad usage or input, 130 interrupted.",
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attribute", help="attribute a model's output to its input tokens",
                       parents=[P["method"], P["target"], P["params"], P["seed"], P["batching"], P["model"], P["quiet"]])
    a.add_argument("model", help=f"built-in name (see `mechattr models`, e.g. {DEFAULT_MODEL}), local HF dir, or Hub name")
    a.add_argument("text", help="the prompt")
    a.add_argument("--target", "-t", default=None, help="the next token to explain, e.g. ' Paris' (default: the model's own prediction)")
    a.add_argument("--continuation", default=None, help="force this continuation and attribute each of its tokens")
    a.add_argument("--generate", type=int, default=None, help="greedily generate N tokens and attribute each")
    a.add_argument("--baselines", default=None, metavar="LIST", help="compare the method under several baselines instead: comma-separated names (zero, pad, eos, unk, mean, uniform, gaussian) and optionally a last item 'prompt:TEXT' (a counterfactual prompt of the same token length); prints the sensitivity table, --html/--json write it")
    a.add_argument("--html", default=None, help="write an offline HTML page here")
    a.add_argument("--json", default=None, help="write the result as JSON here ('-' for stdout)")
    a.add_argument("--save", default=None, help="save the result (safetensors + JSON metadata) here")
    a.set_defaults(func=cmd_attribute)

    ds = sub.add_parser("attribute-dataset", help="attribute every prompt of a file, streaming resumable shards to a directory (runs data-parallel under torchrun)",
                        parents=[P["method"], P["target"], P["params"], P["seed"], P["batching"], P["model"], P["quiet"]])
    ds.add_argument("prompts", help="a .jsonl file (strings or {\"text\", \"target\", \"contrast\"} objects a line), a JSON list, or plain text with one prompt a line")
    ds.add_argument("--model", required=True, help="built-in name (see `mechattr models`), local HF dir, or Hub name")
    ds.add_argument("--out", "-o", required=True, help="output directory: manifest.json and one shard-NNNNN.safetensors per shard")
    ds.add_argument("--target", "-t", default=None, help="the next token to explain for every prompt without its own (default: the model's own prediction)")
    ds.add_argument("--shard-size", type=int, default=64, help="items per shard file, the unit of resuming and of splitting over ranks (default 64)")
    ds.add_argument("--no-resume", action="store_true", help="delete the shards already in --out and start over (default: skip finished shards)")
    ds.add_argument("--json", action="store_true", help="print the run summary (items, shards, items/s) as JSON")
    ds.set_defaults(func=cmd_attribute_dataset)

    v = sub.add_parser("validate", help="sanity checks, faithfulness curves and agreement for several methods",
                       parents=[P["seed"], P["model"], P["quiet"]])
    v.add_argument("model", help="model name or directory, as for `attribute`")
    v.add_argument("text", nargs="?", default=None, help="one prompt (or use --prompts FILE)")
    v.add_argument("--prompts", default=None, help="a file with one prompt per line, or a JSON list of strings")
    v.add_argument("--target", "-t", default=None, help="the next token to explain (default: the model's own prediction)")
    v.add_argument("--methods", default="integrated_gradients,input_x_gradient,saliency", help="comma-separated methods to check")
    v.add_argument("--checks", default="all", help="'all' or comma-separated: randomization, data_randomization, completeness, perturbation, agreement, ablation, roar, ground_truth; and (only when named) attention_correlation, attention_permutation, attention_adversarial")
    v.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="a validate() option, repeatable: -o threshold=0.4 -o replacement='delete'")
    v.add_argument("--html", default=None, help="write the offline HTML report here")
    v.add_argument("--json", default=None, help="write the report as JSON here ('-' for stdout)")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("report", help="write one offline HTML report: several methods, agreement, optional validation",
                       parents=[P["target"], P["seed"], P["model"], P["quiet"]])
    r.add_argument("model", help="built-in name (see `mechattr models`), local HF dir, or Hub name")
    r.add_argument("text", help="the prompt")
    r.add_argument("--target", "-t", default=None, help="the next token to explain (default: the model's own prediction)")
    r.add_argument("--methods", default="integrated_gradients,input_x_gradient,saliency", help="comma-separated method names")
    r.add_argument("--validate", action="store_true", help="also run completeness, deletion/insertion curves, agreement and ablation checks")
    r.add_argument("--no-figures", action="store_true", help="leave out matplotlib figures even when matplotlib is installed")
    r.add_argument("--out", "-o", default="mechattr-report.html", help="output HTML file (default mechattr-report.html)")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("explain", help="the answer first: which tokens matter, which methods pass this prompt's checks, which heads carry it (one offline page)",
                       parents=[P["seed"], P["model"], P["quiet"]])
    e.add_argument("model", help="built-in name (see `mechattr models`), local HF dir, or Hub name")
    e.add_argument("text", help="the prompt")
    e.add_argument("--target", "-t", default=None, help="the next token to explain (default: the model's own prediction)")
    e.add_argument("--contrast", "-c", default=None, help="a foil token: explain target vs foil")
    e.add_argument("--counterfactual", default=None, help="a prompt of the same token length that changes the answer; names the heads that carry the difference")
    e.add_argument("--budget", default="fast", choices=["fast", "thorough"], help="fast: input x gradient, occlusion, AttnLRP, CP-LRP, GIM; thorough: + IG, SHAP, rollout/flow")
    e.add_argument("--top-k", type=int, default=2, help="how many tokens the answer names at most (default 2)")
    e.add_argument("--html", default=None, help="write the offline page here")
    e.add_argument("--json", default=None, help="write the explanation as JSON here ('-' for stdout)")
    e.set_defaults(func=cmd_explain)

    m = sub.add_parser("methods", help="list the attribution methods, one line each")
    m.add_argument("--json", action="store_true", help="machine-readable output with parameters")
    m.set_defaults(func=cmd_methods)

    mo = sub.add_parser("models", help="list the built-in models")
    mo.add_argument("--json", action="store_true", help="machine-readable output")
    mo.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="`mechattr explain` on three examples (factual recall with a counterfactual, subject-verb agreement, a pun probe); one offline page each",
                       parents=[P["seed"]])
    d.add_argument("--model", default=None, help="model (default: SmolLM2-135M when installed, else the built-in default model)")
    d.add_argument("--budget", default="fast", choices=["fast", "thorough"], help="explain's method budget (default fast)")
    d.add_argument("--methods", default=None, help="comma-separated methods instead of the budget's set")
    d.add_argument("--out", default="mechattr-demo.html", help="the first page (the others get -agreement and -pun suffixes)")
    d.add_argument("--quiet", "-q", action="store_true", help="print only the output file")
    d.set_defaults(func=cmd_demo)

    from .circuits.cli import add_parser as add_circuit_parser

    add_circuit_parser(sub, [P["seed"], P["model"], P["quiet"]])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) == "validate" and not (args.text or args.prompts):
        parser.error("validate needs a prompt or --prompts FILE")
    if getattr(args, "command", None) == "demo" and args.model is None:
        from .tl.loading import demo_model

        args.model = demo_model()
    from ._cli_files import about_a_file_option, check_args
    from .errors import MechattrError

    try:
        check_args(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MechattrError as e:
        if args.debug:
            raise
        print(f"mechattr: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # reading or writing one of the user's files failed after the checks
        if args.debug or not about_a_file_option(args, e.filename):
            if args.debug:
                raise
            print(f"mechattr: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
            return EXIT_INTERNAL
        print(f"mechattr: error: cannot use {e.filename!r}: {e.strerror or e}; check the path and its permissions.", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            raise
        print(f"mechattr: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
