"""Discovery of the gauges of a new layer (issue 8; ``../shared/spec/ddc.md`` §6).

Write a layer's outputs in SymPy (:func:`layer`), with declared activations
(:mod:`~gaugemath.discovery.functions`), and :func:`discover` returns the :class:`LieAlgebra` of its
affine parameter symmetries: searched numerically, every generator proved exactly, checked
complete against the numeric null space, closed under brackets, with Noether charges, and (for
per-unit scale/shift/rotation families) a gauge that :func:`gaugemath.prove` certifies and
:mod:`~gaugemath.discovery.backend` turns into backend orbit families for DDCAdam.
"""

from .algebra import LieAlgebra, discover
from .functions import cross_entropy, declare, gelu, relu, relu2, silu, softmax, tanh
from .layer import Layer, from_reference, layer

__all__ = ["Layer", "LieAlgebra", "cross_entropy", "declare", "discover", "from_reference", "gelu", "layer", "relu",
           "relu2", "silu", "softmax", "tanh"]
