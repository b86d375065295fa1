"""ReGLU feed-forward block (not in the catalogue): ``y = W_down (relu(W_gate x) ⊙ (W_up x))``.

``gaugemath discover examples/layers/reglu.py`` derives its gauges: per hidden unit, the gate row
rescales against the down column (relu is positively homogeneous of degree 1) and, independently,
the up row rescales against the down column (the product is bilinear): ``2·hidden`` generators.
"""

import sympy as sp

from gaugemath.discovery import layer, relu

#: the instances discovery derives on (the general form is stated across them)
WIDTHS = [dict(d_model=2, hidden=2), dict(d_model=3, hidden=4)]


def build(d_model: int = 2, hidden: int = 2):
    """The block at widths ``d_model`` (input/output) and ``hidden`` (units)."""
    w_gate = sp.MatrixSymbol("W_gate", hidden, d_model)
    w_up = sp.MatrixSymbol("W_up", hidden, d_model)
    w_down = sp.MatrixSymbol("W_down", d_model, hidden)
    x = sp.MatrixSymbol("x", d_model, 1)
    y = w_down * sp.matrix_multiply_elementwise(relu(w_gate * x), (w_up * x).as_explicit())
    return layer("reglu", [w_gate, w_up, w_down], [x], y, widths=dict(d_model=d_model, hidden=hidden),
                 description=f"y = W_down (relu(W_gate x) ⊙ W_up x), d_model={d_model}, hidden={hidden}")
