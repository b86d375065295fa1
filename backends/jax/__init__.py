"""JAX backend: ``ddc_adam`` (an optax ``GradientTransformation``) and the pytree binder.

Formulas are generated into ``_generated.py`` by ``gaugemath codegen`` (``jax.numpy`` printer).
"""

from .._spec import GaugeSpec, TensorView
from .binding import JaxBinding, bind, leaf_paths
from .optim import DDCAdamState, ddc_adam, ddc_muon, newton_schulz

__all__ = ["DDCAdamState", "GaugeSpec", "JaxBinding", "TensorView", "bind", "ddc_adam", "ddc_muon", "leaf_paths",
           "newton_schulz"]
