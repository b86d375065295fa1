"""Gradients of a layer's outputs at random points: ``∇_θ f_o(θ_p, x_p)`` by reverse mode on the DAG.

The expression DAG is evaluated once per batch of ``P`` points (every node holds a ``(P,)``
array), then one reverse sweep per output accumulates adjoints. Nodes that do not depend on
``θ`` are never swept. Declared functions supply their value and derivative
(:mod:`gaugemath.discovery.functions`); ``relu`` is piecewise linear, so its gradient at generic
(random) points is exact, and the kink is a null set.

Points: ``θ ~ N(0, 1)`` and ``x ~ N(0, 1)`` entry-wise; constants take their declared values.
Points where anything is not finite (outside a function's domain) are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..errors import GaugeError
from .functions import ELEMENTARY, REGISTRY
from .graph import topological
from .layer import Layer


@dataclass(frozen=True)
class Samples:
    """``theta``: ``(P, n)`` points; ``grads``: ``(P, outputs, n)`` gradients; ``dropped`` non-finite points."""

    theta: np.ndarray
    grads: np.ndarray
    dropped: int


def _function(node: sp.Expr, layer: str):
    f = ELEMENTARY.get(type(node))
    if f is not None:
        return f
    decl = REGISTRY.get(type(node).__name__)
    if decl is None:  # pragma: no cover - layer validation refuses these first
        raise GaugeError(layer, None, f"function '{type(node).__name__}' has no numeric implementation")
    return decl.value, decl.derivative


def sample_gradients(lay: Layer, points: int, rng: np.random.Generator) -> Samples:
    """Gradients of every output w.r.t. ``θ`` at ``points`` random points (see the module docstring)."""
    coords = lay.coordinates
    index = {s: i for i, s in enumerate(coords)}
    theta = rng.standard_normal((points, len(coords)))
    values: dict[sp.Expr, np.ndarray | float] = {}
    for s in lay.input_symbols:
        values[s] = rng.standard_normal(points)
    for s, v in lay.constants.items():
        values[s] = float(v)
    for s, i in index.items():
        values[s] = theta[:, i]
    order = topological(lay.outputs)
    depends: dict[sp.Expr, bool] = {}
    symbolic: dict[sp.Expr, bool] = {}
    with np.errstate(all="ignore"):
        for node in order:
            depends[node] = node in index or any(depends[a] for a in node.args)
            symbolic[node] = node.is_Symbol or any(symbolic[a] for a in node.args)
            if node in values:
                continue
            if not symbolic[node]:
                values[node] = float(node)
            elif isinstance(node, sp.Add):
                values[node] = sum(values[a] for a in node.args)
            elif isinstance(node, sp.Mul):
                values[node] = np.prod(np.broadcast_arrays(*[values[a] for a in node.args]), axis=0)
            elif isinstance(node, sp.Pow):
                values[node] = np.power(values[node.base], values[node.exp])
            else:
                values[node] = _function(node, lay.name)[0](values[node.args[0]])
        grads = np.zeros((points, len(lay.outputs), len(coords)))
        for o, out in enumerate(lay.outputs):
            adj: dict[sp.Expr, np.ndarray] = {out: np.ones(points)}
            for node in reversed(order):
                a = adj.pop(node, None)
                if a is None or not depends[node]:
                    continue
                if node in index:
                    grads[:, o, index[node]] += a
                    continue
                for child, partial in _partials(node, values, depends, lay.name):
                    adj[child] = adj.get(child, 0.0) + a * partial
    ok = np.isfinite(grads).all(axis=(1, 2)) & np.isfinite(theta).all(axis=1)
    return Samples(theta[ok], grads[ok], int((~ok).sum()))


def _partials(node, values, depends, layer):
    """``(child, ∂node/∂child)`` for each θ-dependent argument of ``node``."""
    args = node.args
    if isinstance(node, sp.Add):
        return [(c, 1.0) for c in args if depends[c]]
    if isinstance(node, sp.Mul):
        vals = [values[c] for c in args]
        out = []
        for i, c in enumerate(args):
            if depends[c]:
                others = [v for j, v in enumerate(vals) if j != i]
                out.append((c, np.prod(np.broadcast_arrays(1.0, *others), axis=0) if others else 1.0))
        return out
    if isinstance(node, sp.Pow):
        b, e = values[node.base], values[node.exp]
        return [(node.base, e * np.power(b, e - 1))] if depends[node.base] else []
    return [(args[0], _function(node, layer)[1](values[args[0]]))]
