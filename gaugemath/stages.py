"""Stages: how a proof treats each intermediate quantity of a symbolic forward pass.

Every intermediate is put in canonical rational form (:func:`gaugemath.exact.canonical`).
To keep deep forward passes small, an intermediate that is *already invariant* is replaced
by a fresh symbol, one per distinct canonical form (hash-consing):

* :class:`ActedStage` runs on ``g·θ``: an intermediate free of the group's symbols is
  abbreviated (after pulling out positive factors, which declared homogeneous activations
  need to see).
* :class:`LookupStage` runs on ``θ`` with the same table: it abbreviates an intermediate
  only if the acted pass produced the very same canonical form.
* :class:`FirstOrderStage` truncates every intermediate to the jet ``v₀ + Σ ε_a v_a`` (exact
  forward-mode differentiation along several directions at once) and abbreviates ``v₀``
  only when every ``v_a = 0``.

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
        if rest.could_extract_minus_sign():  # one key for ±rest
            num, rest = -num, -rest
        return pos * num, rest

    def small(self, e: sp.Expr) -> bool:
        return e.is_Atom or sp.count_ops(e) <= self.threshold

    def symbol(self, rest: sp.Expr, create: bool) -> sp.Symbol | None:
        if rest not in self.table and create:
            self.table[rest] = sp.Symbol(f"{self.prefix}{len(self.table)}", real=True)
        return self.table.get(rest)


class ActedStage(_Table):
    """Stage for the pass on ``g·θ``: abbreviates group-free intermediates."""

    def __init__(self, group_symbols, threshold: int = 0):
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
    """Truncate every intermediate to ``v₀ + Σ_a ε_a v_a`` (first order in each ``ε_a``).

    One pass differentiates along several directions at once; ``v₀`` is abbreviated when
    every ``v_a`` vanishes.
    """

    def __init__(self, eps, threshold: int = 0):
        super().__init__("J", threshold)
        self.eps = tuple(eps) if isinstance(eps, (list, tuple)) else (eps,)
        self._zero = {e: 0 for e in self.eps}

    def __call__(self, e: sp.Expr) -> sp.Expr:
        v0 = canonical(e.subs(self._zero))
        vs = [canonical(sp.diff(e, x).subs(self._zero)) for x in self.eps]
        if all(v == 0 for v in vs) and not self.small(v0):
            coeff, rest = self.split(v0)
            v0 = coeff * self.symbol(rest, create=True)
        return v0 + sum(x * v for x, v in zip(self.eps, vs))
