"""Exact simplification: the zero test behind every symbolic proof.

A check passes only when its residual simplifies *exactly* to ``0``; nothing here is
numerical. Squared norms are always factored before a square root is taken, so that
``sqrt(a**2 * (x**2 + y**2))`` becomes ``a * sqrt(x**2 + y**2)`` for positive ``a`` and
the same radical appears, letter for letter, wherever the same orbit invariant occurs.
"""

from __future__ import annotations

import sympy as sp


def canonical(expr: sp.Expr) -> sp.Expr:
    """Canonical rational form of ``expr`` with common factors pulled out.

    ``cancel`` puts a rational function of the symbols (radicals and transcendental
    atoms are treated as symbols) into lowest terms; ``factor_terms`` then exposes a
    common positive factor, which declared homogeneous activations pull out.
    """
    return sp.factor_terms(sp.cancel(expr))


def squared_norm(entries) -> sp.Expr:
    """``Σ e²`` over ``entries``, factored so that group scalars come out of ``sqrt``."""
    return sp.factor(sp.cancel(sum(sp.expand(e) ** 2 for e in entries)))


def norm(entries) -> sp.Expr:
    """Euclidean norm ``sqrt(Σ e²)`` with the squared norm factored first."""
    return sp.sqrt(squared_norm(entries))


def residual(expr: sp.Expr) -> sp.Expr:
    """Simplify ``expr``; the result is ``0`` exactly when the identity holds.

    Tries, in order of cost: ``cancel``; splitting ``exp`` of sums and expanding
    ``log`` of products of positive factors (for log-sum-exp identities); ``simplify``.
    """
    r = sp.cancel(expr)
    if r == 0:
        return sp.S.Zero
    if r.has(sp.exp, sp.log):
        s = sp.expand(r, power_exp=True)
        s = s.replace(sp.log, lambda a: sp.log(sp.factor_terms(sp.cancel(a))))
        s = sp.expand_log(s, force=True)
        s = sp.cancel(sp.expand(s))
        if s == 0:
            return sp.S.Zero
        r = s
    r2 = sp.simplify(r)
    return sp.S.Zero if r2 == 0 else r2


def matrix_residual(m: sp.Matrix) -> sp.Matrix:
    """Entry-wise :func:`residual`."""
    return m.applyfunc(residual)


def is_zero_matrix(m: sp.Matrix) -> bool:
    return all(e == 0 for e in m)
