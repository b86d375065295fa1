"""Plain-text (Markdown) description of what the core derived for a gauge.

Used by ``gaugemath derive`` and by the certificates: the Lie-algebra basis, the generator
fields on the parameter blocks, their brackets, the canonical frame and invariant metric,
and the Noether charges.
"""

from __future__ import annotations

import sympy as sp

from .gauge import Gauge, GaugeBase


def sstr(e) -> str:
    """Deterministic printed form (lexicographic term order)."""
    return sp.sstr(e, order="lex")


def short(e, limit: int = 600) -> str:
    """:func:`sstr`, cut to ``limit`` characters (a residual can be huge)."""
    s = sstr(e)
    return s if len(s) <= limit else s[:limit] + f" … ({len(s)} characters)"


def _matrix_rows(m: sp.Matrix) -> str:
    return "[" + "; ".join(", ".join(sstr(e) for e in m.row(i)) for i in range(m.rows)) + "]"


def describe(gauge: GaugeBase, max_metric: int = 30) -> str:
    """Markdown summary of everything derived for ``gauge`` (deterministic text)."""
    out = ["**Reference layer.** " + gauge.model.description, ""]
    for a in gauge.model.assumptions:
        out.append(f"- assumption: {a}")
    out.append("")
    blocks = ", ".join(f"`{b}` ({m.rows}×{m.cols})" for b, m in gauge.blocks.items())
    out.append(f"**Parameter blocks.** {blocks}; n = {len(gauge.coordinates)} coordinates.")
    out.append("")
    if isinstance(gauge, Gauge):
        out.append(f"**Group.** {gauge.group.name}, dimension {gauge.dim}, "
                   + (f"identity component plus {len(gauge.group.components)} component representative(s) "
                      "that generate the component group." if gauge.group.components else "connected."))
    else:
        out.append("**Group.** product of the factors " + ", ".join(f"`{f.name}` ({f.group.name})"
                                                                    for f in gauge.factors)
                   + f"; dimension {gauge.dim}.")
    if isinstance(gauge, Gauge):
        out += ["", "**Lie algebra basis** ξ_a (matrices of the representation):", ""]
        out += [f"- ξ_{lab} = {_matrix_rows(xi)}" for lab, xi in zip(gauge.labels, gauge.group.basis)]
    out += ["", "**Generators** X_a(θ) = d/dt (I + t ξ_a)·θ at t = 0 (non-zero blocks):", ""]
    for a, lab in enumerate(gauge.labels):
        parts = "; ".join(f"{b} ↦ {_matrix_rows(m)}" for b, m in gauge.describe_field(a).items())
        out.append(f"- `{lab}`: {parts}")
    out += ["", "**Brackets** of the generator fields:", ""]
    nonzero = {k: v for k, v in gauge.field_brackets.items() if any(v)}
    if not nonzero:
        out.append("- all vanish (abelian)")
    for (a, b), v in nonzero.items():
        rhs = " + ".join(f"{sstr(c)}·X_{gauge.labels[i]}" for i, c in enumerate(v) if c != 0)
        out.append(f"- [X_{gauge.labels[a]}, X_{gauge.labels[b]}] = {rhs}")
    out += ["", f"**Canonical frame** h(θ) ({gauge.frame_name}); invariant metric G(θ) = D(h(θ))ᵀ D(h(θ)).", ""]
    if isinstance(gauge, Gauge) and len(gauge.coordinates) <= max_metric:
        out.append(f"- h(θ) = {_matrix_rows(gauge.frame(gauge.blocks))}")
        gm = gauge.metric_at(gauge.blocks)
        diag = gm.is_diagonal()
        shown = "diag(" + ", ".join(sstr(e) for e in gm.diagonal()) + ")" if diag else _matrix_rows(gm)
        out.append(f"- G(θ) = {shown}")
        out.append("")
    out += ["**Noether charges** Q = θᵀMθ + 2bᵀθ for symmetric generator combinations:", ""]
    if not gauge.charges:
        out.append("- none (no symmetric combination of generators)")
    for c in gauge.charges:
        out.append(f"- Q[{c.label}] = {sstr(c.expr)}")
    for n in gauge.notes:
        out.append(f"- note: {n}")
    return "\n".join(out + [""])


