"""gaugemath: continuous parameter symmetries (gauges) of neural networks, derived and proved.

The symbolic core: a gauge is a Lie group acting on named parameter blocks of a reference
layer written in SymPy. Generators, brackets, invariant metric, projectors, canonical frame
and Noether charges are derived from the action, and every claim is checked exactly.

>>> import gaugemath
>>> gaugemath.gauges()
gauges(ce_shift, relu_rescale, swiglu_rescale, norm_scale, head_rotation, transformer_block)
>>> g = gaugemath.gauge("relu_rescale")  # d_in = hidden = d_out = 2
>>> g.charges[0].expr  # unit 0: ‖W_in[0,:]‖² + b_in[0]² - ‖W_out[:,0]‖²
W_in[0,0]**2 + W_in[0,1]**2 - W_out[0,0]**2 - W_out[1,0]**2 + b_in[0]**2
"""

from .catalogue import gauge, gauges, transformer_block
from .discovery import LieAlgebra, discover
from .errors import GaugeError, ProofError
from .gauge import Charge, ComposedGauge, Gauge, MatrixGroup, ReferenceModel, block_symbols
from .proofs import Certificate, Check, prove

__version__ = "0.1.0"

__all__ = [
    "Certificate",
    "Charge",
    "Check",
    "ComposedGauge",
    "Gauge",
    "GaugeError",
    "LieAlgebra",
    "MatrixGroup",
    "ProofError",
    "ReferenceModel",
    "block_symbols",
    "discover",
    "gauge",
    "gauges",
    "prove",
    "transformer_block",
]
