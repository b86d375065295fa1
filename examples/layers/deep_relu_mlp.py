"""Two-hidden-layer ReLU network (not in the catalogue, whose ReLU gauge has one hidden layer).

``y = W3 relu(W2 relu(W1 x + b1) + b2) + b3``. ``gaugemath discover examples/layers/deep_relu_mlp.py``
derives one positive rescale per hidden unit of each layer: ``(W1[k], b1[k], W2[:, k])`` and
``(W2[k], b2[k], W3[:, k])`` — both act on ``W2``, on its columns and on its rows.
"""

import sympy as sp

from gaugemath.discovery import layer, relu

#: the instances discovery derives on (the general form is stated across them)
WIDTHS = [dict(h1=2, h2=3), dict(h1=3, h2=2)]


def build(d_in: int = 2, h1: int = 2, h2: int = 2, d_out: int = 1):
    """The network at widths ``d_in → h1 → h2 → d_out``."""
    w1, b1 = sp.MatrixSymbol("W1", h1, d_in), sp.MatrixSymbol("b1", h1, 1)
    w2, b2 = sp.MatrixSymbol("W2", h2, h1), sp.MatrixSymbol("b2", h2, 1)
    w3, b3 = sp.MatrixSymbol("W3", d_out, h2), sp.MatrixSymbol("b3", d_out, 1)
    x = sp.MatrixSymbol("x", d_in, 1)
    y = w3 * relu(w2 * relu(w1 * x + b1) + b2) + b3
    return layer("deep_relu_mlp", [w1, b1, w2, b2, w3, b3], [x], y, widths=dict(d_in=d_in, h1=h1, h2=h2, d_out=d_out),
                 description=f"y = W3 relu(W2 relu(W1 x + b1) + b2) + b3, widths {d_in}→{h1}→{h2}→{d_out}")
