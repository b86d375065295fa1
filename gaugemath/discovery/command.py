"""``gaugemath discover PATH | catalogue:NAME``: print a layer's algebra; write its certificate and backend code.

``PATH`` is a Python file defining ``build(**widths) -> Layer`` (or ``layer``), optionally ``WIDTHS``
(a list of width dicts: discovery runs at each and states the general form). ``-o key=value`` builds
one instance at those widths instead. ``catalogue:NAME`` rediscovers a catalogue gauge from its
reference layer and compares the algebras exactly.

``--torch pkg.module:factory`` (or ``path/to/file.py:factory``) discovers from torch code:
``factory(**widths) -> nn.Module`` is built at
the widths of ``-o`` (or the module's ``WIDTHS``), traced on its ``example_inputs()`` (or the module's
``example(model)``), and translated into a layer (:mod:`~gaugemath.discovery.from_torch`); ``--loss`` is
``bind()``'s. ``--backend-dir DIR`` writes the torch and JAX families the backends apply; with ``--check``
nothing is written and the command fails (exit 1) if the certificate or the files in ``DIR`` differ from
a fresh derivation.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
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


def load_factory(spec: str):
    """``(factory, widths, example)`` from ``pkg.module:factory`` (see the module docstring)."""
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise GaugeError("discover", spec, "--torch takes pkg.module:factory (or path/to/file.py:factory)")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name)
            loader = importlib.util.spec_from_file_location(f"_gaugemath_module_{file.stem}", file)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except Exception as e:
        raise GaugeError("discover", spec, f"cannot import {mod_name}: {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise GaugeError("discover", spec, f"{mod_name} has no callable {attr}")
    return factory, getattr(module, "WIDTHS", None), getattr(module, "example", None)


def _certificate(alg: LieAlgebra, source: str) -> str:
    """Discovery report plus, where a gauge exists, the core's certificate of it."""
    from ..certificates import VariantResult, _row, render_certificate
    from ..describe import describe
    from ..proofs import prove

    out = [alg.describe(), "## Declared assumptions", ""]
    out += [f"- {a}" for a in alg.layer.assumptions] or ["- none (only the properties of the functions used)"]
    out += ["", "## How this certificate is re-checked", "",
            f"`gaugemath discover {source} --certificate FILE` re-derives it (search, exact proofs, the gauge's "
            "certificate) from the layer; the proofs are exact, so the same layer gives the same text.", "",
            "## Exact proofs of the generators", ""]
    for inst in alg.instances or [alg]:
        widths = ", ".join(f"{k}={v}" for k, v in inst.layer.widths.items()) or "defaults"
        out.append(f"- instance ({widths}): {inst.dim} generators, every residual ⟨∇f_o, X_a⟩ = 0 exactly; "
                   f"numeric null space {inst.search.dim}; {'complete' if inst.complete else 'INCOMPLETE'}")
    from .backend import bindable, support

    try:  # the families the backends apply (the others are listed above); else the whole frameable algebra
        gauge = (bindable(alg) if any(s.backend for s in support(alg)) else alg).to_gauge()
    except GaugeError as e:
        return "\n".join(out + ["", f"No gauge: {e}", ""])
    cert = prove(gauge)
    result = VariantResult(gauge.name, "discovered", gauge.summary, describe(gauge, max_metric=12),
                           tuple(_row(c) for c in cert.checks), cert.seconds)
    core = render_certificate(gauge.name, [result]).replace(
        "(`gaugemath prove --check` fails on any difference)", f"(re-derived by `gaugemath discover {source}`)")
    return "\n".join(out + ["", core])


def run(args) -> int:
    """Entry point of the ``discover`` subcommand (``args`` from :func:`gaugemath.cli.main`)."""
    t0 = time.perf_counter()
    try:
        if bool(args.layer) == bool(args.torch):
            raise GaugeError("discover", None, "give a layer file (or catalogue:NAME) or --torch pkg.module:factory")
        if args.layer.startswith("catalogue:"):
            from .rediscover import rediscover

            alg, comparison = rediscover(args.layer.split(":", 1)[1], **dict(args.option or []))
        elif args.torch:
            factory, widths, example = load_factory(args.torch)
            comparison = None
            alg = discover(factory, widths=[dict(args.option)] if args.option else widths, example=example,
                           loss=args.loss)
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
        source = _source(args)
        files = {}
        if args.certificate:
            files[Path(args.certificate)] = _certificate(alg, source)
        if args.backend_dir:
            from .backend import render

            out = Path(args.backend_dir)
            files.update({out / f"{alg.layer.name.replace(':', '_')}_{lib}.py": render(alg, lib, source)
                          for lib in ("torch", "jax")})
        if files:
            if args.check:
                stale = [str(f) for f, text in files.items()
                         if not f.is_file() or f.read_text(encoding="utf-8") != text]
                if stale:
                    print(f"out of date (re-run without --check): {', '.join(stale)}", file=sys.stderr)
                    return 1
                print(f"up to date: {', '.join(str(f) for f in files)}")
            else:
                for f, text in files.items():
                    f.parent.mkdir(parents=True, exist_ok=True)
                    f.write_text(text, encoding="utf-8")
                    print(f"wrote {f}")
    except (GaugeError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if alg.complete else 1


def _source(args) -> str:
    """The ``gaugemath discover`` arguments that re-derive this result (named in certificates and files)."""
    def norm(path: str) -> str:  # ./x.py and x.py name one file: one text in the generated files
        return os.path.normpath(path) if path.endswith(".py") else path

    if args.torch:
        module, _, attr = args.torch.rpartition(":")
        parts = [f"--torch {norm(module)}:{attr}"]
    else:
        parts = [norm(args.layer)]
    parts += [f"-o {k}={v}" for k, v in (args.option or [])]
    if args.torch and args.loss:
        parts.append(f"--loss {args.loss}")
    return " ".join(parts)


def add_parser(sub) -> None:
    """Register ``discover`` on the ``gaugemath`` subparsers."""
    from ..cli import _parse_option

    p = sub.add_parser("discover", help="discover, prove and print the gauges of a layer file (or catalogue:NAME)")
    p.add_argument("layer", nargs="?", default="",
                   help="path/to/layer.py (defines build(**widths) -> Layer) or catalogue:NAME")
    p.add_argument("--torch", metavar="PKG.MODULE:FACTORY",
                   help="discover from torch code: FACTORY(**widths) -> nn.Module (see gaugemath.discovery.command)")
    p.add_argument("--loss", choices=["cross_entropy"], default=None,
                   help="with --torch: what training keeps invariant (bind()'s loss=); default: every output")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the --certificate / --backend-dir files differ from a fresh "
                        "derivation")
    p.add_argument("-o", "--option", action="append", type=_parse_option, metavar="KEY=VALUE",
                   help="width (or catalogue option), e.g. -o hidden=3: one instance instead of WIDTHS")
    p.add_argument("--certificate", metavar="FILE", help="write the discovery report and the gauge's certificate")
    p.add_argument("--backend-dir", metavar="DIR", help="write generated torch and jax family modules")
    p.set_defaults(run=run)
