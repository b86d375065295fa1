"""Expression DAGs: SymPy expressions share subexpressions; visit each distinct node once."""

from __future__ import annotations

from collections.abc import Iterable

import sympy as sp


def topological(exprs: Iterable[sp.Expr]) -> list[sp.Expr]:
    """Distinct nodes of ``exprs`` with every node after its arguments (iterative post-order)."""
    order: list[sp.Expr] = []
    seen: set = set()
    for root in exprs:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            stack.extend((a, False) for a in node.args if a not in seen)
    return order
