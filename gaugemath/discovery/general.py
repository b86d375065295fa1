"""The general form of a discovered algebra: the same families at several widths, with a dimension formula.

Discovery runs on small instances. If at every width the families have the same signature
(:mod:`gaugemath.discovery.patterns`) and each per-unit family has one member for *every* unit of
its slice axis, the pattern is stated for all widths; the number of members (and of mixing
generators) is fitted to a monomial in the width parameters, ``c · Π w_i^{e_i}`` (total degree ≤ 3)
or ``c · w(w∓1)/2``, which must match every instance exactly. Each instance is proved exactly, so
the statement is proved at those widths and recognised as a pattern beyond them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sympy as sp

from .patterns import Family


@dataclass(frozen=True)
class FamilyForm:
    """One family across instances: its description, member counts per width and fitted formula."""

    description: str
    counts: tuple[int, ...]
    formula: sp.Expr | None


@dataclass(frozen=True)
class GeneralForm:
    """Families and dimension formula across the instances at ``widths``."""

    widths: tuple[dict, ...]
    dims: tuple[int, ...]
    families: tuple[FamilyForm, ...]
    dim_formula: sp.Expr | None
    consistent: bool
    reason: str = ""

    def describe(self) -> str:
        ws = "; ".join(", ".join(f"{k}={v}" for k, v in w.items()) or "defaults" for w in self.widths)
        out = [f"instances: {ws}; dimensions {list(self.dims)}"]
        if not self.consistent:
            return "\n".join(out + [f"no common pattern: {self.reason}"])
        for f in self.families:
            form = f" = {sp.sstr(f.formula)}" if f.formula is not None else ""
            out.append(f"- {f.description}: {list(f.counts)} generators{form}")
        if self.dim_formula is not None:
            out.append(f"dim = {sp.sstr(self.dim_formula)} (fits every instance)")
        return "\n".join(out)


def fit(widths: Sequence[Mapping[str, int]], counts: Sequence[int]) -> sp.Expr | None:
    """Simplest ``c · monomial`` (or ``c · w(w∓1)/2``) in the width symbols matching every count."""
    names = sorted({k for w in widths for k in w})
    if len(widths) < 2 or not names:
        return None
    syms = [sp.Symbol(n, positive=True, integer=True) for n in names]
    shapes = [sp.S.One]
    for deg in (1, 2, 3):
        shapes += [sp.Mul(*c) for c in itertools.combinations_with_replacement(syms, deg)]
    shapes += [s * (s - 1) / 2 for s in syms] + [s * (s + 1) / 2 for s in syms]
    for shape in shapes:
        vals = [shape.subs({s: w.get(str(s), 0) for s in syms}) for w in widths]
        if any(v == 0 for v in vals):
            continue
        ratios = {sp.Rational(c) / v for c, v in zip(counts, vals)}
        if len(ratios) == 1:
            c = ratios.pop()
            if c.is_integer:
                return sp.expand(c * shape)
    return None


def general_form(widths: Sequence[Mapping[str, int]], instances: Sequence[Sequence[Family]],
                 dims: Sequence[int]) -> GeneralForm:
    """Compare the family lists of several instances (see the module docstring)."""
    widths = tuple(dict(w) for w in widths)
    sigs = [sorted((f.kind, f.signature) for f in fams) for fams in instances]
    if any(s != sigs[0] for s in sigs[1:]):
        return GeneralForm(widths, tuple(dims), (), None, False, "the family signatures differ between widths")
    forms = []
    for key in sigs[0]:
        per = [next(f for f in fams if (f.kind, f.signature) == key) for fams in instances]
        incomplete = [f for f in per if f.kind != "mix" and list(f.units) != list(range(len(f.units)))]
        if incomplete:
            return GeneralForm(widths, tuple(dims), (), None, False,
                               f"family '{per[0].describe()}' does not cover every unit")
        counts = tuple(len(f.members) for f in per)
        forms.append(FamilyForm(per[0].describe(), counts, fit(widths, counts)))
    total = None
    if forms and all(f.formula is not None for f in forms):
        total = sp.expand(sum(f.formula for f in forms))
    elif not forms:
        total = sp.S.Zero
    return GeneralForm(widths, tuple(dims), tuple(forms), total, True)
