"""``gaugemath discover PATH | catalogue:NAME``: print a layer's algebra; write its certificate and backend code.

``PATH`` is a Python file defining ``build(**widths) -> Layer`` (or ``layer``), optionally ``WIDTHS``
(a list of width dicts: discovery runs at each and states the general form). ``-o key=value`` builds
one instance at those widths instead. ``catalogue:NAME`` rediscovers a catalogue gauge from its
reference layer and compares the algebras exactly.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from ..errors import GaugeError
from .algebra import LieAlgebra, discover
from .layer import Layer


def load_builder(path: str):
    """``(builder, widths)`` from a layer file (see the module docstring)."""
    file = Path(path)
    if not file.is_file():
        raise GaugeError("discover", path, "no such layer file")
    spec = importlib.util.spec_from_file_location(f"_gaugemath_layer_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except GaugeError:
        raise
    except Exception as e:  # a shape error etc. inside the user's file
        raise GaugeError("discover", path, f"the layer file failed to load: {type(e).__name__}: {e}") from e
    builder = getattr(module, "build", None) or getattr(module, "layer", None)
    if isinstance(builder, Layer):
        return builder, None
    if not callable(builder):
        raise GaugeError("discover", path, "the file defines neither build(**widths) -> Layer nor a Layer named layer")
    return builder, getattr(module, "WIDTHS", None)


def _certificate(alg: LieAlgebra) -> str:
    """Discovery report plus, where a gauge exists, the core's certificate of it."""
    from ..certificates import VariantResult, _row, render_certificate
    from ..describe import describe
    from ..proofs import prove

    out = [alg.describe(), "## Exact proofs of the generators", ""]
    for inst in alg.instances or [alg]:
        widths = ", ".join(f"{k}={v}" for k, v in inst.layer.widths.items()) or "defaults"
        out.append(f"- instance ({widths}): {inst.dim} generators, every residual ⟨∇f_o, X_a⟩ = 0 exactly; "
                   f"numeric null space {inst.search.dim}; {'complete' if inst.complete else 'INCOMPLETE'}")
    try:
        gauge = alg.to_gauge()
    except GaugeError as e:
        return "\n".join(out + ["", f"No gauge: {e}", ""])
    cert = prove(gauge)
    result = VariantResult(gauge.name, "discovered", gauge.summary, describe(gauge, max_metric=12),
                           tuple(_row(c) for c in cert.checks), cert.seconds)
    return "\n".join(out + ["", render_certificate(gauge.name, [result])])


def run(args) -> int:
    """Entry point of the ``discover`` subcommand (``args`` from :func:`gaugemath.cli.main`)."""
    t0 = time.perf_counter()
    try:
        if args.layer.startswith("catalogue:"):
            from .rediscover import rediscover

            alg, comparison = rediscover(args.layer.split(":", 1)[1], **dict(args.option or []))
        else:
            builder, widths = load_builder(args.layer)
            comparison = None
            if isinstance(builder, Layer):
                alg = discover(builder)
            else:
                alg = discover(builder, widths=[dict(args.option)] if args.option else widths)
        print(alg.describe())
        if comparison is not None:
            print(comparison.describe())
        print(f"discovered in {time.perf_counter() - t0:.1f} s ("
              + ", ".join(f"{k} {v:.1f} s" for k, v in alg.seconds.items()) + " for the first instance)")
        if args.certificate:
            Path(args.certificate).write_text(_certificate(alg), encoding="utf-8")
            print(f"wrote {args.certificate}")
        if args.backend_dir:
            from .backend import render

            out = Path(args.backend_dir)
            out.mkdir(parents=True, exist_ok=True)
            for lib in ("torch", "jax"):
                (out / f"{alg.layer.name.replace(':', '_')}_{lib}.py").write_text(render(alg, lib), encoding="utf-8")
            print(f"wrote backend families for torch and jax to {out}/")
    except (GaugeError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if alg.complete else 1


def add_parser(sub) -> None:
    """Register ``discover`` on the ``gaugemath`` subparsers."""
    from ..cli import _parse_option

    p = sub.add_parser("discover", help="discover, prove and print the gauges of a layer file (or catalogue:NAME)")
    p.add_argument("layer", help="path/to/layer.py (defines build(**widths) -> Layer) or catalogue:NAME")
    p.add_argument("-o", "--option", action="append", type=_parse_option, metavar="KEY=VALUE",
                   help="width (or catalogue option), e.g. -o hidden=3: one instance instead of WIDTHS")
    p.add_argument("--certificate", metavar="FILE", help="write the discovery report and the gauge's certificate")
    p.add_argument("--backend-dir", metavar="DIR", help="write generated torch and jax family modules")
    p.set_defaults(run=run)
