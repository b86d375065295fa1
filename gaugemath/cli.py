"""The gaugemath command: list, derive, prove, codegen, verify, discover, experiment, demo.

``gaugemath prove`` proves every catalogue construction, writes one certificate per name
into ``proofs/`` and prints a table; ``--check`` writes nothing and exits 1 if any
certificate is missing, stale, or any identity fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .catalogue import CONSTRUCTIONS, gauge, gauges
from .certificates import DEFAULT_DIR, prove_catalogue, stale_certificates, write_certificates
from .describe import describe
from .errors import GaugeError


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"option {text!r} is not of the form key=value")
    if value in ("True", "False"):
        return key, value == "True"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _cmd_list(_args) -> int:
    for name in gauges():
        g = gauge(name)
        print(f"{name:18s} {g.summary}")
    return 0


def _cmd_derive(args) -> int:
    opts = dict(args.option or [])
    try:
        g = gauge(args.name, **opts)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    except (GaugeError, TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# {args.name}: {g.summary}\n")
    print(describe(g))
    return 0


def _cmd_prove(args) -> int:
    names = args.names or list(CONSTRUCTIONS)
    t0 = time.perf_counter()
    try:
        results = prove_catalogue(names, processes=args.jobs)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    out_dir = Path(args.out)
    print(f"{'gauge':18s} {'construction':22s} {'checks':>6s}  {'result':8s} {'seconds':>7s}")
    print("-" * 66)
    failed = False
    for name, res in results.items():
        for r in res:
            print(f"{name:18s} {r.variant:22s} {r.checks:6d}  {'proved' if r.passed else 'FAILED':8s} {r.seconds:7.1f}")
            failed |= not r.passed
    print("-" * 66)
    total = sum(r.checks for res in results.values() for r in res)
    print(f"{total} identities, {sum(len(r) for r in results.values())} constructions, {wall:.1f} s wall")
    for res in results.values():
        for r in res:
            for f in r.failures:
                print(f"FAILED {r.name} [{r.variant}]: {f}", file=sys.stderr)
    if args.check:
        stale = stale_certificates(results, out_dir)
        for name in stale:
            print(f"stale or missing certificate: {out_dir / (name + '.md')} (run `gaugemath prove`)", file=sys.stderr)
        if not stale and not failed:
            print(f"certificates in {out_dir}/ are up to date")
        return 1 if (stale or failed) else 0
    paths = write_certificates(results, out_dir)
    print(f"wrote {len(paths)} certificate(s) to {out_dir}/")
    return 1 if failed else 0


def _cmd_codegen(args) -> int:
    from .codegen import generate

    t0 = time.perf_counter()
    stale = generate(args.backends, check=args.check)
    wall = time.perf_counter() - t0
    if args.check:
        for path in stale:
            print(f"stale or missing generated file: {path} (run `gaugemath codegen`)", file=sys.stderr)
        if not stale:
            print(f"generated backend code is up to date ({wall:.1f} s)")
        return 1 if stale else 0
    print(f"wrote {len(stale)} file(s) ({', '.join(stale) or 'all up to date'}) in {wall:.1f} s")
    return 0


def _cmd_verify(args) -> int:
    from .verify import verify

    try:
        ok = verify(args.backend, args.dtype, args.steps, names=args.names or None, control=not args.no_control,
                    vertical=args.vertical, optimizer=args.optimizer)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if ok else 1


def _cmd_experiment(args) -> int:
    from .experiments import experiment

    try:
        module = experiment(args.name)
        overrides = {"steps": args.steps, "seeds": tuple(range(args.seeds)) if args.seeds else None,
                     "optimizers": tuple(args.optimizers) if args.optimizers else None, **dict(args.option or [])}
        cfg = module.configure(args.scale, **overrides)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or f"runs/{args.name}-{args.scale}"
    result = module.run(cfg, out, show_progress=not args.no_progress)
    print(result["table"])
    print(f"\nresults, metrics and plots in {result['dir']}")
    return 0


def _cmd_demo(args) -> int:
    from .experiments import experiment

    module = experiment("grokking")
    cfg = module.configure("cpu")
    print(f"Grokking (a + b) mod {cfg.modulus}, {cfg.depth}-block transformer, {cfg.train_fraction:.0%} of pairs for "
          f"training, {cfg.steps} full-batch steps, seeds {list(cfg.seeds)}: AdamW vs DDCAdam "
          f"(lr {cfg.optim.lr}, weight decay {cfg.optim.weight_decay}).")
    result = module.run(cfg, args.out, show_progress=not args.no_progress)
    print(result["table"])
    print(f"\nresults, metrics and plots in {result['dir']} (grokking.png)")
    return 0


def _cmd_discover(args) -> int:
    from .discovery.command import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gaugemath", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the catalogue").set_defaults(run=_cmd_list)
    p = sub.add_parser("derive", help="print a gauge's generators, brackets, frame, metric and charges")
    p.add_argument("name", help=f"a catalogue gauge: {', '.join(sorted(gauges()))}")
    p.add_argument("-o", "--option", action="append", type=_parse_option, metavar="KEY=VALUE",
                   help="constructor option, e.g. -o hidden=3 -o frame=anchor")
    p.set_defaults(run=_cmd_derive)
    p = sub.add_parser("prove", help="prove the catalogue and write certificates")
    p.add_argument("names", nargs="*", help=f"catalogue names (default: all): {', '.join(CONSTRUCTIONS)}")
    p.add_argument("--check", action="store_true",
                   help="write nothing; fail if a certificate is stale or a check fails")
    p.add_argument("--out", default=str(DEFAULT_DIR), help="certificate folder (default: proofs)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    p.set_defaults(run=_cmd_prove)
    p = sub.add_parser("codegen", help="generate backend code from the derived formulas")
    p.add_argument("--check", action="store_true", help="write nothing; fail if a generated file is stale")
    p.add_argument("--backends", nargs="+", default=["torch", "jax"], choices=["torch", "jax"],
                   help="(default: both)")
    p.set_defaults(run=_cmd_codegen)
    p = sub.add_parser("verify", help="the equivariance protocol on a backend's DDCAdam/DDCMuon: run B from g·θ "
                                      "must stay the image of run A (docs/backends/torch.md)")
    p.add_argument("names", nargs="*", help="constructions (default: all; see gaugemath.verify._constructions)")
    p.add_argument("--backend", default="torch", choices=["torch", "jax"], help="torch (default) or jax (optax)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "muon"], help="DDCAdam (default) or DDCMuon")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="parameter dtype (PASS below 1e-6 in float32, 1e-12 in float64)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps (default 50, the paper's protocol)")
    p.add_argument("--vertical", default="freeze", choices=["freeze", "sgd", "adam"],
                   help="what the orbit directions do (default freeze)")
    p.add_argument("--no-control", action="store_true", help="skip the AdamW negative control")
    p.set_defaults(run=_cmd_verify)
    from .discovery.command import add_parser as _add_discover

    _add_discover(sub)
    sub.choices["discover"].set_defaults(run=_cmd_discover)
    p = sub.add_parser("experiment", help="seeded optimizer comparison (AdamW, DDCAdam, Muon, DDCMuon) with plots")
    from .experiments import EXPERIMENTS

    p.add_argument("name", help=f"experiment: {', '.join(EXPERIMENTS)}")
    p.add_argument("--scale", default="cpu", choices=["cpu", "paper"],
                   help="cpu: minutes on 2 cores (default); paper: the paper's GPU-scale setting")
    p.add_argument("--out", default=None, help="run directory (default: runs/NAME-SCALE)")
    p.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    p.add_argument("--seeds", type=int, default=None, help="override: seeds 0..N-1")
    p.add_argument("--optimizers", nargs="+", default=None,
                   choices=["adamw", "ddcadam", "muon", "ddcmuon", "rvadamw", "ddcadam[lognorm]"] + [
                       f"{o}[{f}]" for o in ("ddcadam", "ddcmuon") for f in ("balanced", "per_family")],
                   help="optimizers to compare; ddcadam[per_family] etc. choose the binding's frames, "
                        "ddcadam[lognorm] DDCAdam(frame='lognorm') on the gauges it covers, rvadamw AdamW inside "
                        "seed 004's Rotational Wrapper")
    p.add_argument("-o", "--option", action="append", type=_parse_option, metavar="KEY=VALUE",
                   help="override a config field, e.g. -o depth=8 -o modulus=113")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_experiment)
    p = sub.add_parser("demo", help="the main job: CPU grokking comparison AdamW vs DDCAdam, table and plots")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
