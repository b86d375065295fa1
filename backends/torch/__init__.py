"""PyTorch backend: ``DDCAdam``/``DDCMuon`` and the gauge binder (formulas generated into ``_generated.py``)."""

from .binding import Binding, GaugeSpec, TensorView, bind, detect
from .muon import DDCMuon, newton_schulz
from .optim import DDCAdam

__all__ = ["Binding", "DDCAdam", "DDCMuon", "GaugeSpec", "TensorView", "bind", "detect", "newton_schulz"]
