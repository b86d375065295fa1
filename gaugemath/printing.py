"""Our own SymPy printer for array code (PyTorch and ``jax.numpy``).

SymPy's ``pytorch``/``jax`` lambdify printers emit code we cannot commit (dense ``Matrix``
constructors, ``torch.sqrt`` of Python floats, module-qualified names that do not exist in every
version; see ``docs/codegen.md``). The expressions we print are small scalar formulas in named
per-unit statistics (e.g. ``sq_W_in``, a tensor of row squared norms), evaluated element-wise on
tensors, so the printer only needs: ``+ - * /``, integer and rational powers, ``sqrt``, ``Abs``
and rational constants, printed as Python floats of the working dtype by the array library's own
broadcasting.

>>> import sympy as sp
>>> a, b = sp.symbols("a b", positive=True)
>>> ArrayPrinter("torch").doprint(sp.sqrt(sp.sqrt(a) / sp.sqrt(b)) + sp.Abs(sp.Symbol("c")) / 3)
'a**(1/4)/b**(1/4) + torch.abs(c)/3'
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.str import StrPrinter

MODULES = {"torch": "torch", "jax": "jnp"}


class ArrayPrinter(StrPrinter):
    """Print a scalar SymPy expression as element-wise array code for ``library``."""

    printmethod = "_array_code"

    def __init__(self, library: str):
        if library not in MODULES:
            raise ValueError(f"unknown array library {library!r}; choose from {sorted(MODULES)}")
        super().__init__()
        self.module = MODULES[library]

    def _print_Symbol(self, expr: sp.Symbol) -> str:
        name = expr.name
        if not name.isidentifier():
            raise ValueError(f"symbol {name!r} is not a valid identifier for generated code")
        return name

    def _print_Rational(self, expr: sp.Rational) -> str:
        return f"-({-expr.p}/{expr.q})" if expr.p < 0 else f"({expr.p}/{expr.q})"

    def _print_Half(self, expr) -> str:
        return "(1/2)"

    def _print_Integer(self, expr: sp.Integer) -> str:
        return str(int(expr))

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"{self.module}.abs({self._print(expr.args[0])})"

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exp = expr.args
        if exp == sp.S.Half:
            return f"{self.module}.sqrt({self._print(base)})"
        if exp == -sp.S.Half:
            return f"1/{self.module}.sqrt({self._print(base)})"
        if exp == -1:
            return f"1/{self.parenthesize(base, sp.printing.precedence.PRECEDENCE['Pow'])}"
        if exp.is_Rational:
            b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Pow"])
            e = str(int(exp)) if exp.is_Integer else f"({exp.p}/{exp.q})"
            return f"{b}**{e}"
        raise ValueError(f"cannot print the power {expr} (only rational exponents are generated)")

    def _print_Function(self, expr) -> str:
        raise ValueError(f"no array translation for the function {expr.func} in generated code")

    def _print_Float(self, expr) -> str:
        raise ValueError(f"floating constant {expr} in a derived formula: derivations must stay exact")


def print_array_code(expr: sp.Expr, library: str) -> str:
    """``expr`` as element-wise code for ``"torch"`` or ``"jax"``."""
    return ArrayPrinter(library).doprint(expr)
