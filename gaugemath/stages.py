"""Stages: how a proof treats each intermediate quantity of a symbolic forward pass.

Every intermediate is put in canonical rational form (:func:`gaugemath.exact.canonical`).
To keep deep forward passes small, an intermediate that is *already invariant* is replaced
by a fresh symbol, one per distinct canonical form (hash-consing):

* :class:`ActedStage` runs on ``g·θ``: an intermediate free of the group's symbols is
  abbreviated (after pulling out positive factors, which declared homogeneous activations
  need to see).
* :class:`LookupStage` runs on ``θ`` with the same table: it abbreviates an intermediate
  only if the acted pass produced the very same canonical form.
* :class:`FirstOrderStage` truncates every intermediate to the jet ``v₀ + ε v₁`` (exact
  forward-mode differentiation along one direction) and abbreviates ``v₀`` only when
  ``v₁ = 0``.

Abbreviation can hide an equality but never invent one, so a zero residual is a proof.
"""

from __future__ import annotations

import sympy as sp

from .activations import _positive_part
from .exact import canonical


class _Table:
    def __init__(self, prefix: str, threshold: int):
        self.prefix, self.threshold = prefix, threshold
        self.table: dict[sp.Expr, sp.Symbol] = {}

    def split(self, e: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
        pos, rest = _positive_part(e)
        num, rest = rest.as_coeff_Mul()
        return pos * num, rest

    def small(self, e: sp.Expr) -> bool:
        return e.is_Atom or sp.count_ops(e) <= self.threshold

    def symbol(self, rest: sp.Expr, create: bool) -> sp.Symbol | None:
        if rest not in self.table and create:
            self.table[rest] = sp.Symbol(f"{self.prefix}{len(self.table)}", real=True)
        return self.table.get(rest)


class ActedStage(_Table):
    """Stage for the pass on ``g·θ``: abbreviates group-free intermediates."""

    def __init__(self, group_symbols, threshold: int = 40):
        super().__init__("Z", threshold)
        self.group_symbols = set(group_symbols)

    def __call__(self, e: sp.Expr) -> sp.Expr:
        e = canonical(e)
        if self.small(e):
            return e
        coeff, rest = self.split(e)
        if rest.free_symbols & self.group_symbols:
            return e
        return coeff * self.symbol(rest, create=True)


class LookupStage(_Table):
    """Stage for the pass on ``θ``: abbreviates only forms the acted pass abbreviated."""

    def __init__(self, acted: ActedStage):
        super().__init__("Z", acted.threshold)
        self.table = acted.table

    def __call__(self, e: sp.Expr) -> sp.Expr:
        e = canonical(e)
        if self.small(e):
            return e
        coeff, rest = self.split(e)
        s = self.symbol(rest, create=False)
        return e if s is None else coeff * s


class FirstOrderStage(_Table):
    """Truncate every intermediate to ``v₀ + ε v₁``; abbreviate ``v₀`` when ``v₁ = 0``."""

    def __init__(self, eps: sp.Symbol, threshold: int = 40):
        super().__init__("J", threshold)
        self.eps = eps

    def __call__(self, e: sp.Expr) -> sp.Expr:
        v0 = canonical(e.subs(self.eps, 0))
        v1 = canonical(sp.diff(e, self.eps).subs(self.eps, 0))
        if v1 == 0 and not self.small(v0):
            coeff, rest = self.split(v0)
            v0 = coeff * self.symbol(rest, create=True)
        return v0 + self.eps * v1
