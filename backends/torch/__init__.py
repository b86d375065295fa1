"""PyTorch backend: ``DDCAdam`` and the gauge binder (formulas generated into ``_generated.py``)."""

from .binding import Binding, GaugeSpec, bind, detect
from .optim import DDCAdam

__all__ = ["Binding", "DDCAdam", "GaugeSpec", "bind", "detect"]
