"""Activation functions with *declared* algebraic properties.

A proof may only use what is declared here:

* ``relu`` is positively homogeneous of degree 1: ``relu(c z) = c relu(z)`` for ``c > 0``;
  its derivative obeys Euler's identity ``z relu'(z) = relu(z)`` (for ``z != 0``; the kink
  is a null set for every continuous input distribution).
* ``relu2 = relu²`` is positively homogeneous of degree 2.
* ``silu(z) = z / (1 + exp(-z))`` is written out and has no scaling property, so no
  proof can rescale through it.

The homogeneity rule is applied by SymPy's automatic evaluation: ``Relu(a*x)`` with
``a`` declared positive evaluates to ``a*Relu(x)``.
"""

from __future__ import annotations

import sympy as sp


def _positive_part(z: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """Split ``z = c * rest`` with ``c`` a product of factors SymPy knows are positive."""
    z = sp.factor_terms(z)
    if not z.is_Mul:
        return sp.S.One, z
    pos = [f for f in z.args if f.is_positive]
    rest = [f for f in z.args if not f.is_positive]
    return sp.Mul(*pos), sp.Mul(*rest)


class _Homogeneous(sp.Function):
    """Pointwise function positively homogeneous of degree ``degree`` (declared)."""

    degree = 1
    nargs = 1
    #: value at a number: exact for the built-in ones; a declared function (``discovery.declare``) has only its
    #: numerical ``value`` (``_numeric``, float64), used for floating-point arguments — an exact number stays
    #: unevaluated, so proofs never see a rounded value
    _exact = None
    _numeric = None

    @classmethod
    def eval(cls, z):
        if z.is_Number:
            if cls._exact is not None:
                return cls._exact(z)
            if cls._numeric is not None and z.is_Float:
                return sp.Float(float(cls._numeric(float(z))), max(z._prec, 53))
            return None
        c, rest = _positive_part(z)
        if c != 1:
            return c**cls.degree * cls(rest)
        return None

    def fdiff(self, argindex=1):
        # Euler's identity for homogeneous functions: z f'(z) = p f(z)  (z != 0).
        z = self.args[0]
        return self.degree * self / z


class Relu(_Homogeneous):
    """``relu(z) = max(z, 0)``; declared positively homogeneous of degree 1."""

    degree = 1
    _exact = staticmethod(lambda z: sp.Max(z, 0))


class Relu2(_Homogeneous):
    """``relu2(z) = max(z, 0)²``; declared positively homogeneous of degree 2."""

    degree = 2
    _exact = staticmethod(lambda z: sp.Max(z, 0) ** 2)


def silu(z: sp.Expr, stage=lambda e: e) -> sp.Expr:
    """``silu(z) = z σ(z) = z / (1 + e^{-z})`` written out: no scaling property.

    ``stage`` (see :mod:`gaugemath.layers`) is applied to each intermediate.
    """
    return stage(z * stage(1 / stage(1 + stage(sp.exp(-z)))))


#: How each declared function is evaluated numerically (name -> (numpy, mpmath)).
NUMERIC_IMPLEMENTATIONS = {
    "Relu": ("relu", "relu"),
    "Relu2": ("relu2", "relu2"),
}
