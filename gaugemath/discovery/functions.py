"""Declared functions: what discovery may assume about each activation, and how to evaluate it.

A layer may only use functions whose properties are *declared*. A declaration says how a
function is evaluated numerically (value and derivative, for the null-space search at random
points) and which algebraic property the proofs may use:

==========  =======================================  ==========================================
name        property                                 how a proof uses it
==========  =======================================  ==========================================
``relu``    positively homogeneous, degree 1          Euler: ``z relu'(z) = relu(z)`` (``z ≠ 0``)
``relu2``   positively homogeneous, degree 2          Euler: ``z relu2'(z) = 2 relu2(z)``
``silu``    none (``z / (1 + e^{-z})`` written out)   chain rule only
``gelu``    none (``z (1 + erf(z/√2)) / 2``)          chain rule only
``tanh``    none (SymPy's ``tanh``)                   chain rule only
softmax     shift-invariant: written with ``exp``     ``exp(a + c) = exp(a) exp(c)``, exactly
CE          shift-invariant (``log Σ exp − Σ p z``)   the same, with ``Σ p = 1``
==========  =======================================  ==========================================

:func:`declare` adds a function of one argument: positively homogeneous of a given degree
(then the proofs rescale through it, by Euler's identity, exactly as for ``relu``), or opaque
(no property: a generator may only move parameters its argument does not depend on).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..activations import Relu, Relu2, _Homogeneous
from ..errors import GaugeError
from ..layers import cross_entropy as _cross_entropy


@dataclass(frozen=True)
class Declared:
    """A declared scalar function ``f``: ``value(z)``, ``derivative(z)`` (NumPy, element-wise) and
    ``degree`` (positive homogeneity degree, or ``None`` when no scaling property is declared)."""

    name: str
    cls: type
    value: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]
    degree: int | None = None


#: Declared functions by SymPy class name (what appears in an expression tree).
REGISTRY: dict[str, Declared] = {
    "Relu": Declared("relu", Relu, lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float), 1),
    "Relu2": Declared("relu2", Relu2, lambda z: np.maximum(z, 0.0) ** 2, lambda z: 2 * np.maximum(z, 0.0), 2),
}


def _elementwise(f: Callable[[sp.Expr], sp.Expr]):
    def apply(z):
        if isinstance(z, sp.MatrixExpr) and not isinstance(z, sp.MatrixBase):
            z = z.as_explicit()
        if isinstance(z, sp.MatrixBase):
            return z.applyfunc(f)
        return f(sp.sympify(z))

    apply.__doc__ = f.__doc__
    return apply


relu = _elementwise(Relu)
relu.__doc__ = "``max(z, 0)`` element-wise; declared positively homogeneous of degree 1."
relu2 = _elementwise(Relu2)
relu2.__doc__ = "``max(z, 0)²`` element-wise; declared positively homogeneous of degree 2."


@_elementwise
def silu(z: sp.Expr) -> sp.Expr:
    """``silu(z) = z / (1 + e^{-z})`` element-wise, written out: no scaling property."""
    return z / (1 + sp.exp(-z))


@_elementwise
def gelu(z: sp.Expr) -> sp.Expr:
    """``gelu(z) = z (1 + erf(z/√2)) / 2`` element-wise, written out: no scaling property."""
    return z * (1 + sp.erf(z / sp.sqrt(2))) / 2


@_elementwise
def tanh(z: sp.Expr) -> sp.Expr:
    """``tanh(z)`` element-wise (SymPy's): no scaling property."""
    return sp.tanh(z)


def softmax(z: sp.Matrix) -> sp.Matrix:
    """``softmax(z)_i = e^{z_i} / Σ_j e^{z_j}`` of a column, written with ``exp`` (shift-invariant)."""
    e = z.applyfunc(sp.exp)
    return e / sum(e)


def cross_entropy(z: sp.Matrix, targets: sp.Matrix) -> sp.Expr:
    """``log Σ_i e^{z_i} − Σ_i p_i z_i``; shift-invariant when ``Σ p_i = 1`` (see
    :func:`gaugemath.layers.soft_targets`)."""
    return _cross_entropy(z, targets)


def declare(name: str, *, value: Callable, derivative: Callable, degree: int | None = None):
    """Declare a new scalar function of one argument and return it (element-wise on matrices).

    ``value``/``derivative`` evaluate it on NumPy arrays. ``degree``: declare ``f`` positively
    homogeneous, ``f(c z) = c^degree f(z)`` for ``c > 0`` (the proofs then use Euler's identity
    ``z f'(z) = degree · f(z)``); ``None``: no property (opaque).

    >>> import numpy as np
    >>> leaky = declare("leaky", value=lambda z: np.where(z > 0, z, z / 10),
    ...                 derivative=lambda z: np.where(z > 0, 1.0, 0.1), degree=1)
    >>> leaky(2 * sp.Symbol("a", positive=True) * sp.Symbol("z"))
    2*a*leaky(z)
    """
    if not name.isidentifier():
        raise GaugeError("discover", None, f"function name {name!r} is not an identifier")
    cls_name = name[:1].upper() + name[1:]
    if cls_name in REGISTRY and REGISTRY[cls_name].name != name:
        raise GaugeError("discover", None, f"function {name!r} clashes with the declared {REGISTRY[cls_name].name!r}")

    def _print(self, printer):
        return f"{name}({printer._print(self.args[0])})"

    def _numeric(z):  # the declared value at one float (a 0-d array in, a float out)
        return float(np.asarray(value(np.asarray(z, dtype=float))))

    if degree is not None:
        if int(degree) != degree or degree < 1:
            raise GaugeError("discover", None, f"function {name!r}: degree={degree} must be a positive integer")
        cls = type(cls_name, (_Homogeneous,), {"degree": int(degree), "_sympystr": _print,
                                               "_numeric": staticmethod(_numeric)})
    else:  # opaque: its derivative is the declared one, a function of its own (evaluated by ``derivative``)
        prime = type(cls_name + "Prime", (sp.Function,), {"nargs": 1})
        def _eval(c, z):  # a float argument (NumericGauge.outputs): the declared value; exact ones stay symbolic
            return sp.Float(_numeric(float(z)), max(z._prec, 53)) if z.is_Float else None

        cls = type(cls_name, (sp.Function,), {"nargs": 1, "_sympystr": _print, "eval": classmethod(_eval),
                                              "fdiff": lambda self, argindex=1: prime(self.args[0])})
        NUMERIC[prime.__name__] = derivative
    REGISTRY[cls_name] = Declared(name, cls, value, derivative, degree)
    NUMERIC[cls_name] = value
    return _elementwise(cls)


#: How :class:`~gaugemath.numeric.NumericGauge` evaluates declared functions (and opaque ones' derivatives),
#: by SymPy class name: the declared NumPy callables
NUMERIC: dict[str, Callable] = {}


def lookup(func: sp.Expr, layer: str) -> Declared:
    """The declaration of an applied function node, or a :class:`GaugeError` saying what to declare."""
    name = type(func).__name__
    decl = REGISTRY.get(name)
    if decl is None or not isinstance(func, decl.cls):
        raise GaugeError(layer, None, f"function '{name}' is not declared: declare it with "
                         f"gaugemath.discovery.declare({name.lower()!r}, value=..., derivative=..., degree=...) "
                         "(degree=k if it is positively homogeneous of degree k, None if it has no scaling property)")
    return decl


#: SymPy functions with a known numeric value and derivative (``(value, derivative)`` on arrays).
ELEMENTARY: dict[type, tuple[Callable, Callable]] = {
    sp.exp: (np.exp, np.exp),
    sp.log: (np.log, lambda z: 1.0 / z),
    sp.tanh: (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    sp.erf: (np.vectorize(math.erf, otypes=[float]),
             lambda z: 2.0 / math.sqrt(math.pi) * np.exp(-(z**2))),
    sp.sin: (np.sin, np.cos),
    sp.cos: (np.cos, lambda z: -np.sin(z)),
}
