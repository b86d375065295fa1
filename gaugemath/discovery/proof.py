"""Exact proofs of discovered generators, reusing the core's derivations.

:class:`Fields` is a gauge-like view of a set of affine vector fields ``X_a(θ) = A_a θ + b_a`` on a
layer: it has no group action or frame, but it is a :class:`~gaugemath.gauge.GaugeBase`, so the
core derives its Noether charges and its (exact) field brackets, and the core's exact forward-mode
jets prove invariance:

    ⟨∇_θ f_o(θ, x), X_a(θ)⟩ = d/dε f_o(θ + ε X_a(θ), x) |_{ε=0} = 0     (exact zero, symbolic θ, x)

The jets run the layer's staged forward with :class:`~gaugemath.stages.FirstOrderStage`: every
intermediate is truncated to first order and put in canonical form, declared homogeneous
functions differentiate by Euler's identity ``z f'(z) = p f(z)`` and ``exp``/``log`` by their
exact rules, so a zero residual is a proof for all θ and x (off the kinks of ``relu``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sympy as sp

from ..exact import residual
from ..gauge import GaugeBase, Params
from ..proofs import _jets
from .graph import topological
from .layer import Layer
from .search import Candidate


class Fields(GaugeBase):
    """Affine generator fields on ``layer`` (``labels[a]`` names ``fields[a]``)."""

    def __init__(self, lay: Layer, fields: Sequence[Candidate], labels: Sequence[str]):
        self.name = lay.name
        self.summary = f"symmetries discovered on layer '{lay.name}'"
        self.blocks = dict(lay.params)
        self.model = lay.model()
        self.labels = tuple(labels)
        self.frame_name = "none (a set of generator fields)"
        self.notes = ()
        self.fields = list(fields)

    def generator_fields(self, params: Params) -> list[Params]:
        theta = self.flatten(params)
        return [self.unflatten(list((f.A * theta + f.b).applyfunc(sp.expand))) for f in self.fields]


@dataclass(frozen=True)
class GeneratorProof:
    """Exact invariance residuals ``⟨∇f_o, X_a⟩`` of one generator (all zero ⇔ proved)."""

    label: str
    residuals: tuple[sp.Expr, ...]

    @property
    def proved(self) -> bool:
        return all(r == 0 for r in self.residuals)


#: a staged proof that abbreviates invariants can hide a relation between them (e.g. LayerNorm's
#: Σ_i n_i = 0); generators it cannot close are retried on the unabbreviated outputs up to this many DAG nodes
DIRECT_LIMIT = 400


def _direct(lay: Layer, field: sp.Matrix) -> tuple[sp.Expr, ...] | None:
    """``Σ_i ∂f_o/∂θ_i X_i`` on the unstaged outputs, simplified exactly; ``None`` if too large."""
    if len(topological(lay.outputs)) > DIRECT_LIMIT:
        return None
    coords = lay.coordinates
    return tuple(residual(sum(sp.diff(o, s) * x for s, x in zip(coords, field) if x != 0)) for o in lay.outputs)


def prove_fields(fields: Fields, lay: Layer | None = None) -> list[GeneratorProof]:
    """The exact jet of every output along every generator (one staged pass for all of them);
    with ``lay``, a generator the staged pass leaves non-zero is retried unabbreviated (:data:`DIRECT_LIMIT`)."""
    if not fields.dim:
        return []
    jets = _jets(fields, fields.generators)
    out = []
    for a, (lab, j) in enumerate(zip(fields.labels, jets)):
        proof = GeneratorProof(lab, tuple(j))
        if not proof.proved and lay is not None:
            direct = _direct(lay, fields.generators[:, a])
            if direct is not None and all(r == 0 for r in direct):
                proof = GeneratorProof(lab, direct)
        out.append(proof)
    return out
