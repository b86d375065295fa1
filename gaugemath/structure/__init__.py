"""Gauge structure read off a traced computation: one graph, one detector, frontends per framework.

:mod:`.graph` is the representation (operations on named parameters, with shapes);
:mod:`.torch_trace` builds it from an ``nn.Module`` and example inputs; :mod:`.detect` finds
the orbit families in it by propagating *tags* (which parameter row or channel each entry of
each intermediate value comes from) through the operations, and refuses, naming the operation,
whatever it cannot follow. The detector proposes; the binder then checks every proposal on the
model itself before anything is bound.
"""

from .detect import Detection, Proposal, Refusal, TensorView, detect
from .graph import Graph, Node

__all__ = ["Detection", "Graph", "Node", "Proposal", "Refusal", "TensorView", "detect"]
