"""Code generation: from a derived gauge to array code for the optimizer backends.

Every catalogue gauge is a product of *orbit families*: one group coordinate per unit (hidden
unit, channel, class-axis column, RoPE plane, head), acting on a *slice* of each block it
touches (``rows``: row ``k``; ``cols``: column ``k``; ``all``: the whole block). What a backend
needs per family is

* the slice descriptors (which block, which axis, which exponent ``±1`` of the coordinate),
* the canonical frame ``h_k(θ)`` as a formula in per-unit statistics of the slices,
* the Gram diagonal ``Γ_kk = ‖X_k(θ)‖²`` (Euclidean: at the canonical point the invariant metric
  is the identity, ``G(θ̃) = D(h(θ̃))ᵀD(h(θ̃)) = I``),
* the vertical coordinate ``⟨X_k(θ), u⟩`` as a formula in per-unit statistics of ``(θ, u)``.

All four are *read off the symbolic core* here, never typed in: descriptors from the action
``g·θ`` at the generic element, formulas from ``gauge.frame`` and ``gauge.generators``. Each
formula is obtained by an ansatz (put the unit-0 slice at a point with one free statistic) and
then *proved*: the recovered formula, evaluated on the statistics of every unit, equals the core's
expression exactly, at two different widths. A formula that fails this is an error, not a
fallback. The formulas are then printed by :mod:`gaugemath.printing` (our own printer).

Statistics (per unit ``k``, per role = block name):

==========  ==========================================  =========================
``sq_R``    ``Σ θ_R[slice k]²``                           scale / plane families
``mean_R``  ``Σ θ_R[slice k] / |slice|``                 translation frames
``n_R``     ``|slice k|``                                 translation Gram
``dot_R``   ``Σ θ_R[slice k] u_R[slice k]``               scale coordinates
``usum_R``  ``Σ u_R[slice k]``                            translation coordinates
``cross_R`` ``Σ_c θ_R[2k,c] u_R[2k+1,c] − θ_R[2k+1,c] u_R[2k,c]``  plane coordinates
``R_r0_cJ`` ``θ_R[2k, J]`` (and ``r1``: row ``2k+1``)     plane frames
==========  ==========================================  =========================

``O(d_head)`` head rotations without RoPE have a matrix-valued frame (Gram–Schmidt, i.e. a
Cholesky factor) that is not an element-wise formula: codegen recognises the group and emits the
family with ``kind="head"``; the backend's Cholesky frame is tested against the core's frame.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sympy as sp

from . import catalogue
from .errors import GaugeError
from .exact import residual
from .gauge import Gauge
from .printing import print_array_code

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = {"torch": ROOT / "backends" / "torch" / "_generated.py", "jax": ROOT / "backends" / "jax" / "_generated.py"}


@dataclass(frozen=True)
class Slice:
    """Block ``role`` carries the family's coordinate ``k`` on its ``axis`` slice ``k``.

    ``exponent``: the slice is multiplied by ``α_k^exponent`` (scale), translated by
    ``exponent · v_k`` (translate), or rotated (plane/head: ``exponent = 1``).
    """

    role: str
    axis: str
    exponent: int


@dataclass
class FamilySpec:
    """What a backend needs for one orbit family (see the module docstring)."""

    key: str
    gauge: str
    kind: str  # "scale" | "translate" | "plane" | "head"
    slices: tuple[Slice, ...]
    frame: tuple[sp.Expr, ...] = ()
    gram: sp.Expr | None = None
    coords: sp.Expr | None = None
    source: str = ""
    checks: list[str] = field(default_factory=list)

    def stats(self, which: str) -> list[str]:
        exprs = {"frame": self.frame, "gram": (self.gram,), "coords": (self.coords,)}[which]
        names = {s.name for e in exprs if e is not None for s in e.free_symbols}
        return sorted(names)


# ----------------------------------------------------------------------------- helpers
def _slice(block: sp.Matrix, axis: str, k: int, plane: bool = False) -> list[sp.Expr]:
    if plane:
        return list(block[2 * k : 2 * k + 2, :])
    if axis == "rows":
        return list(block[k, :])
    if axis == "cols":
        return list(block[:, k])
    return list(block)


def _stat(name: str) -> sp.Symbol:
    return sp.Symbol(name, positive=True) if name.startswith(("sq_", "n_")) else sp.Symbol(name, real=True)


def _prove_equal(spec: FamilySpec, what: str, expr: sp.Expr, formula: sp.Expr, values: dict) -> None:
    r = residual(formula.subs(values, simultaneous=True) - expr)
    if r != 0:
        raise GaugeError(spec.gauge, None, f"codegen: the {what} formula {formula} does not reproduce the derived "
                         f"expression (residual {r}); the family is not an element-wise pattern")


def _unit_stats(kind: str, slices, blocks, k, u=None) -> dict[sp.Symbol, sp.Expr]:
    """Values of every statistic for unit ``k`` (used to prove a recovered formula)."""
    out: dict[sp.Symbol, sp.Expr] = {}
    plane = kind == "plane"
    for s in slices:
        th = _slice(blocks[s.role], s.axis, k, plane)
        out[_stat(f"sq_{s.role}")] = sum(e**2 for e in th)
        out[_stat(f"mean_{s.role}")] = sum(th) / len(th)
        out[_stat(f"n_{s.role}")] = sp.Integer(len(th))
        if u is not None:
            uu = _slice(u[s.role], s.axis, k, plane)
            out[_stat(f"dot_{s.role}")] = sum(a * b for a, b in zip(th, uu))
            out[_stat(f"usum_{s.role}")] = sum(uu)
            if plane:
                m, mu = blocks[s.role][2 * k : 2 * k + 2, :], u[s.role][2 * k : 2 * k + 2, :]
                out[_stat(f"cross_{s.role}")] = sum(m[0, c] * mu[1, c] - m[1, c] * mu[0, c] for c in range(m.cols))
        if plane:
            m = blocks[s.role]
            for r in range(2):
                for c in range(m.cols):
                    out[_stat(f"{s.role}_r{r}_c{c}")] = m[2 * k + r, c]
    return out


def _ansatz(kind: str, stat: str, slices, blocks, u=None) -> dict[sp.Expr, sp.Expr]:
    """Put unit 0 at a point where its ``stat`` statistics are free symbols (the others vanish)."""
    sub: dict[sp.Expr, sp.Expr] = {}
    plane = kind == "plane"
    for s in slices:
        th = _slice(blocks[s.role], s.axis, 0, plane)
        uu = _slice(u[s.role], s.axis, 0, plane) if u is not None else None
        if stat == "sq":
            sub.update({e: (sp.sqrt(_stat(f"sq_{s.role}")) if i == 0 else 0) for i, e in enumerate(th)})
        elif stat == "mean":
            sub.update({e: _stat(f"mean_{s.role}") for e in th})
        elif stat == "dot":
            sub.update({e: (1 if i == 0 else 0) for i, e in enumerate(th)})
            sub.update({e: (_stat(f"dot_{s.role}") if i == 0 else 0) for i, e in enumerate(uu)})
        elif stat == "usum":
            sub.update({e: (_stat(f"usum_{s.role}") if i == 0 else 0) for i, e in enumerate(uu)})
        elif stat == "cross":  # θ[0, 0] = 1, u[1, 0] = C: ⟨Jθ, u⟩ = ±C
            cols = blocks[s.role].cols
            sub.update({e: (1 if i == 0 else 0) for i, e in enumerate(th)})
            sub.update({e: (_stat(f"cross_{s.role}") if i == cols else 0) for i, e in enumerate(uu)})
        elif stat == "entry":
            m = blocks[s.role]
            sub.update({m[r, c]: _stat(f"{s.role}_r{r}_c{c}") for r in range(2) for c in range(m.cols)})
        else:  # pragma: no cover - internal
            raise ValueError(stat)
    return sub


def _recover(spec: FamilySpec, what: str, per_unit: Sequence[sp.Expr], stats: Sequence[str], blocks,
             u=None, count: bool = False) -> sp.Expr:
    """Recover a formula in statistics from unit 0 and prove it on every unit."""
    errors = []
    for stat in stats:
        if count:  # a pure number: the slice length
            role = spec.slices[0].role
            formula = _stat(f"n_{role}") * (per_unit[0] / len(_slice(blocks[role], spec.slices[0].axis, 0)))
        else:
            formula = sp.simplify(per_unit[0].subs(_ansatz(spec.kind, stat, spec.slices, blocks, u),
                                                   simultaneous=True))
        try:
            for k, expr in enumerate(per_unit):
                _prove_equal(spec, what, expr, formula, _unit_stats(spec.kind, spec.slices, blocks, k, u))
        except GaugeError as e:
            errors.append(str(e))
            continue
        spec.checks.append(f"{what}: {formula} proved equal to the derived expression for all {len(per_unit)} units")
        return formula
    raise GaugeError(spec.gauge, None, f"codegen: no statistic reproduces the {what}: " + "; ".join(errors))


# ------------------------------------------------------------------------- recognition
def _scale_slices(gauge: Gauge) -> tuple[Slice, ...]:
    g, _ = gauge.generic_element("g")
    n = g.rows
    diag = [g[i, i] for i in range(n)]
    moved = gauge.act(g, gauge.blocks)
    slices = []
    for role, block in gauge.blocks.items():
        owner = {}
        for i in range(block.rows):
            for j in range(block.cols):
                ratio = sp.cancel(moved[role][i, j] / block[i, j])
                hits = [(k, e) for k, d in enumerate(diag) for e in (1, -1) if sp.cancel(ratio - d**e) == 0]
                if len(hits) != 1:
                    raise GaugeError(gauge.name, role, f"codegen: entry ({i},{j}) is not scaled by one coordinate")
                owner[(i, j)] = hits[0]
        exponents = {e for _, e in owner.values()}
        axes = [a for a, index in (("all", lambda i, j: 0), ("rows", lambda i, j: i), ("cols", lambda i, j: j))
                if (a != "all" or n == 1) and all(k == index(i, j) for (i, j), (k, _) in owner.items())]
        if len(exponents) != 1 or not axes:
            raise GaugeError(gauge.name, role, "codegen: block is not scaled along one axis by one exponent")
        slices.append(Slice(role, axes[0], exponents.pop()))
    return tuple(slices)


def _translate_families(gauge: Gauge) -> list[tuple[str, tuple[Slice, ...], list[int]]]:
    g, _ = gauge.generic_element("g")
    coords = sorted({s for s in g.free_symbols}, key=lambda s: s.name)
    moved = gauge.act(g, gauge.blocks)
    out = []
    for role, block in gauge.blocks.items():
        owner = {}
        for i in range(block.rows):
            for j in range(block.cols):
                diff = sp.expand(moved[role][i, j] - block[i, j])
                hits = [c for c in coords if sp.expand(diff - c) == 0]
                if len(hits) != 1:
                    raise GaugeError(gauge.name, role, f"codegen: entry ({i},{j}) is not translated by one coordinate")
                owner[(i, j)] = coords.index(hits[0])
        used = sorted(set(owner.values()))
        if len(used) == 1:
            axis = "all"
        elif all(owner[(i, j)] == used[j] for (i, j) in owner) and len(used) == block.cols:
            axis = "cols"
        else:
            raise GaugeError(gauge.name, role, "codegen: translation is neither per column nor uniform")
        out.append((role, (Slice(role, axis, 1),), used))
    return out


def _scale_family(gauge: Gauge, key: str, source: str) -> FamilySpec:
    slices = _scale_slices(gauge)
    spec = FamilySpec(key, gauge.name, "scale", slices, source=source)
    h = gauge.frame(gauge.blocks)
    n = h.rows
    spec.frame = (_recover(spec, "frame", [h[k, k] for k in range(n)], ["sq"], gauge.blocks),)
    x = gauge.generators
    gram = (x.T * x).applyfunc(sp.expand)
    off = [gram[a, b] for a in range(n) for b in range(n) if a != b and gram[a, b] != 0]
    if off:
        raise GaugeError(gauge.name, None, f"codegen: units are not orthogonal (Γ off-diagonal {off[0]})")
    spec.checks.append("Γ is diagonal: distinct units have orthogonal generators")
    spec.gram = _recover(spec, "Gram diagonal", [gram[k, k] for k in range(n)], ["sq"], gauge.blocks)
    u = {r: b.applyfunc(lambda s: sp.Symbol(f"u_{s.name}", real=True)) for r, b in gauge.blocks.items()}
    uvec = gauge.flatten(u)
    coords = [sp.expand((x[:, k].T * uvec)[0]) for k in range(n)]
    spec.coords = _recover(spec, "vertical coordinate", coords, ["dot"], gauge.blocks, u)
    return spec


def _translate_specs(gauge: Gauge, key: str, source: str) -> list[FamilySpec]:
    h = gauge.frame(gauge.blocks)
    shift = gauge.act(h, gauge.blocks)
    x = gauge.generators
    gram = (x.T * x).applyfunc(sp.expand)
    u = {r: b.applyfunc(lambda s: sp.Symbol(f"u_{s.name}", real=True)) for r, b in gauge.blocks.items()}
    uvec = gauge.flatten(u)
    specs = []
    for role, slices, used in _translate_families(gauge):
        spec = FamilySpec(f"{key}.{role}", gauge.name, "translate", slices, source=source)
        block = gauge.blocks[role]
        frames = [sp.expand(shift[role][0, k] - block[0, k]) if slices[0].axis == "cols"
                  else sp.expand(shift[role][0] - block[0]) for k in range(len(used))]
        spec.frame = (_recover(spec, "frame", frames, ["mean"], gauge.blocks),)
        off = [gram[a, b] for a in used for b in range(gram.cols) if a != b and gram[a, b] != 0]
        if off:
            raise GaugeError(gauge.name, role, f"codegen: translation coordinates not orthogonal ({off[0]})")
        spec.gram = _recover(spec, "Gram diagonal", [gram[a, a] for a in used], ["n"], gauge.blocks, count=True)
        coords = [sp.expand((x[:, a].T * uvec)[0]) for a in used]
        spec.coords = _recover(spec, "vertical coordinate", coords, ["usum"], gauge.blocks, u)
        specs.append(spec)
    return specs


def _rotation_spec(gauge: Gauge, key: str, source: str, rope: bool) -> FamilySpec:
    g, _ = gauge.generic_element("g")
    moved = gauge.act(g, gauge.blocks)
    for role, block in gauge.blocks.items():
        if any(sp.cancel(e) != 0 for e in moved[role] - g * block):
            raise GaugeError(gauge.name, role, "codegen: the group does not act by left multiplication on rows")
    slices = tuple(Slice(role, "rows", 1) for role in gauge.blocks)
    if not rope:
        spec = FamilySpec(key, gauge.name, "head", slices, source=source)
        spec.checks.append("O(d_head) acting on the rows of each head: frame is the Cholesky (Gram–Schmidt) op")
        return spec
    spec = FamilySpec(key, gauge.name, "plane", slices, source=source)
    h = gauge.frame(gauge.blocks)
    planes = h.rows // 2
    blocks = [h[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] for k in range(planes)]
    for b in blocks:  # SO(2): [[c, s], [-s, c]]
        if sp.cancel(b[1, 0] + b[0, 1]) != 0 or sp.cancel(b[1, 1] - b[0, 0]) != 0:
            raise GaugeError(gauge.name, None, "codegen: plane frame is not of the form [[c, s], [-s, c]]")
    spec.checks.append("plane frames have the SO(2) form [[c, s], [-s, c]]")
    spec.frame = (_recover(spec, "frame cosine", [b[0, 0] for b in blocks], ["entry"], gauge.blocks),
                  _recover(spec, "frame sine", [b[0, 1] for b in blocks], ["entry"], gauge.blocks))
    x = gauge.generators
    gram = (x.T * x).applyfunc(sp.expand)
    off = [gram[a, b] for a in range(planes) for b in range(planes) if a != b and gram[a, b] != 0]
    if off:
        raise GaugeError(gauge.name, None, f"codegen: planes are not orthogonal (Γ off-diagonal {off[0]})")
    spec.gram = _recover(spec, "Gram diagonal", [gram[k, k] for k in range(planes)], ["sq"], gauge.blocks)
    u = {r: b.applyfunc(lambda s: sp.Symbol(f"u_{s.name}", real=True)) for r, b in gauge.blocks.items()}
    uvec = gauge.flatten(u)
    coords = [sp.expand((x[:, k].T * uvec)[0]) for k in range(planes)]
    spec.coords = _recover(spec, "vertical coordinate", coords, ["cross"], gauge.blocks, u)
    return spec


# ------------------------------------------------------------------------ the catalogue
#: (key, constructor at two widths, recogniser). Two widths prove the formulas width-independent.
TARGETS: list[tuple[str, Callable[[int], Gauge], str]] = [
    ("ce_shift", lambda w: catalogue.ce_shift(vocab=w + 1, d=w), "translate"),
    ("relu_rescale.balance", lambda w: catalogue.relu_rescale(w, 2, w + 1, frame="balance"), "scale"),
    ("relu_rescale.anchor", lambda w: catalogue.relu_rescale(w, 2, w + 1, frame="anchor"), "scale"),
    ("swiglu_rescale.balance", lambda w: catalogue.swiglu_rescale(w, 2, w + 1, frame="balance"), "scale"),
    ("swiglu_rescale.anchor", lambda w: catalogue.swiglu_rescale(w, 2, w + 1, frame="anchor"), "scale"),
    ("norm_scale.layernorm", lambda w: catalogue.norm_gain("layernorm", 2, w), "scale"),
    ("norm_scale.rmsnorm", lambda w: catalogue.norm_gain("rmsnorm", 2, w), "scale"),
    ("norm_scale.producer", lambda w: catalogue.norm_producer("layernorm", d=w + 1), "scale"),
    ("head_rotation.rope", lambda w: catalogue.head_rotation(True, d_model=w, d_head=4, positions=2), "plane"),
    ("head_rotation.norope", lambda w: catalogue.head_rotation(False, d_model=w, d_head=2), "head"),
]
WIDTHS = (2, 3)


def family_specs(gauge: Gauge, key: str, kind: str, source: str = "") -> list[FamilySpec]:
    """Recognise and prove the orbit family of one gauge outside the catalogue (e.g. a discovered one).

    ``kind``: ``"scale"``, ``"translate"`` or ``"plane"``; the same derivation and proofs as
    :func:`derive_family_specs` at this gauge's width (prove at a second width by calling again).
    """
    source = source or f"{gauge.name} ({gauge.frame_name}); {gauge.model.description}"
    if kind == "scale":
        return [_scale_family(gauge, key, source)]
    if kind == "translate":
        return _translate_specs(gauge, key, source)
    if kind == "plane":
        return [_rotation_spec(gauge, key, source, rope=True)]
    raise GaugeError(gauge.name, None, f"codegen: unknown family kind {kind!r} (scale, translate, plane)")


def derive_family_specs(keys: Sequence[str] | None = None) -> list[FamilySpec]:
    """Recognise and prove every target family at both :data:`WIDTHS`; the formulas must agree."""
    out: list[FamilySpec] = []
    for key, make, kind in TARGETS:
        if keys is not None and key.split(".")[0] not in keys and key not in keys:
            continue
        per_width = []
        for w in WIDTHS:
            gauge = make(w)
            source = f"gaugemath.catalogue: {gauge.name} ({gauge.frame_name}); {gauge.model.description}"
            if kind == "scale":
                specs = [_scale_family(gauge, key, source)]
            elif kind == "translate":
                specs = _translate_specs(gauge, key, source)
            else:
                specs = [_rotation_spec(gauge, key, source, rope=kind == "plane")]
            per_width.append(specs)
        first, second = per_width
        for a, b in zip(first, second, strict=True):
            if (a.slices, a.frame, a.gram, a.coords) != (b.slices, b.frame, b.gram, b.coords):
                raise GaugeError(a.gauge, None, f"codegen: family {a.key} differs between widths {WIDTHS}")
            a.checks.append(f"identical formulas and slices at widths {WIDTHS[0]} and {WIDTHS[1]}")
        out.extend(first)
    return out


# ---------------------------------------------------------------------------- emission
def _function(name: str, exprs: Sequence[sp.Expr], library: str) -> list[str]:
    args = sorted({s.name for e in exprs for s in e.free_symbols})
    body = ", ".join(print_array_code(e, library) for e in exprs)
    sig = f"def {name}(*, {', '.join(args)}, **_):" if args else f"def {name}(**_):"
    return [sig, f"    return {body}" + ("," if len(exprs) > 1 and not body.endswith(",") else ""), ""]


def render(specs: Sequence[FamilySpec], library: str, discovered: str | None = None) -> str:
    """The generated module for ``library`` (deterministic text).

    ``discovered``: the ``gaugemath discover`` source the families came from (a layer file, or
    ``--torch pkg.module:factory``); the module then imports the runtime absolutely (it lives outside the
    package) and says how it is re-derived and checked."""
    module = {"torch": "torch", "jax": "jax.numpy as jnp"}[library]
    if discovered is None:
        origin, check, runtime = ("``gaugemath codegen``", "``gaugemath codegen --check``",
                                  "from .._family import Family, Slice")
    else:
        origin = f"``gaugemath discover {discovered}``"
        check = f"``gaugemath discover {discovered} --backend-dir DIR --check``"
        runtime = "from gaugemath.backends._family import Family, Slice"
    widths = "two widths" if discovered is None else "every discovered width"
    lines = [
        f'"""Generated by {origin} from the symbolic core — do not edit ({library}).',
        "",
        "Each family's frame, Gram diagonal and vertical coordinate were read off the derived gauge and",
        f"proved equal to it, unit by unit, at {widths} (see ``gaugemath.codegen``); regenerate with",
        f"{origin} and check with {check}.",
        '"""',
        "",
        "# ruff: noqa: E501",
        f"import {module}  # noqa: F401",
        "",
        runtime,
        "",
    ]
    for spec in specs:
        ident = spec.key.replace(".", "__")
        lines += [f"# {spec.key}: {spec.source}"] + [f"#   proved: {c}" for c in spec.checks] + [""]
        fns = {}
        if spec.frame:
            lines += _function(f"_{ident}__frame", spec.frame, library)
            fns["frame"] = f"_{ident}__frame"
        if spec.gram is not None:
            lines += _function(f"_{ident}__gram", [spec.gram], library)
            fns["gram"] = f"_{ident}__gram"
        if spec.coords is not None:
            lines += _function(f"_{ident}__coords", [spec.coords], library)
            fns["coords"] = f"_{ident}__coords"
        slices = ", ".join(f"Slice({s.role!r}, {s.axis!r}, {s.exponent})" for s in spec.slices)
        stats = {w: spec.stats(w) for w in ("frame", "gram", "coords")}
        lines += [
            f"{ident.upper()} = Family(",
            f"    key={spec.key!r},",
            f"    gauge={spec.gauge!r},",
            f"    kind={spec.kind!r},",
            f"    slices=({slices},),",
            f"    frame={fns.get('frame')},",
            f"    gram={fns.get('gram')},",
            f"    coords={fns.get('coords')},",
            f"    stats={stats!r},",
            ")",
            "",
        ]
    names = ", ".join(f"{s.key!r}: {s.key.replace('.', '__').upper()}" for s in specs)
    lines += [f"FAMILIES = {{{names}}}", ""]
    text = "\n".join(lines)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return text + f"# content digest: {digest}\n"


def generate(libraries: Sequence[str] = ("torch",), check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) the generated modules; returns the stale paths."""
    specs = derive_family_specs()
    stale = []
    for lib in libraries:
        path = BACKENDS[lib]
        text = render(specs, lib)
        current = path.read_text() if path.exists() else ""
        if current != text:
            stale.append(str(path.relative_to(ROOT)))
            if check:
                diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "committed", "generated",
                                            lineterm="", n=1)
                print("\n".join(list(diff)[:40]))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if "torch" in libraries:  # the same formulas as fused Triton kernels (gaugemath.kernelgen)
        from .kernelgen import write as write_kernels

        stale += write_kernels(specs, check=check)
    return stale
