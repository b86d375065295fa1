"""Rediscover a catalogue gauge from its reference layer, and compare the two algebras exactly.

The layer is the catalogue gauge's :class:`~gaugemath.gauge.ReferenceModel` with the gauge's blocks
as parameters (:func:`~gaugemath.discovery.layer.from_reference`). Both algebras are spans of
affine fields on the same coordinates, flattened to vectors ``(A, b)``; the catalogue's is
*contained* in the discovered one when stacking them does not raise the rank, and *equal* when the
dimensions also agree (same generators up to a change of basis). Anything extra is a symmetry the
catalogue does not use (e.g. the per-plane Q/K rescale that commutes with RoPE).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ..catalogue import gauge as catalogue_gauge
from ..errors import GaugeError
from ..gauge import GaugeBase
from .algebra import LieAlgebra, discover
from .layer import from_reference
from .search import independent


@dataclass(frozen=True)
class Comparison:
    """``catalogue_dim ≤ discovered_dim``; ``contained``/``equal`` exact; ``extra``: discovered generators
    outside the catalogue's span (labels)."""

    name: str
    catalogue_dim: int
    discovered_dim: int
    contained: bool
    extra: tuple[str, ...]
    reduced_dim: int
    reduced_equal: bool

    @property
    def equal(self) -> bool:
        return self.contained and self.catalogue_dim == self.discovered_dim

    def describe(self) -> str:
        if self.equal:
            verdict = "reproduced: same algebra (same generators up to a change of basis)"
        elif self.reduced_equal:
            verdict = (f"reproduced up to field-dependent combinations: the reduced algebra (dim {self.reduced_dim}, "
                       "same orbits) equals the catalogue's")
        elif self.contained:
            verdict = "catalogue algebra contained in the discovered one; extra: " + ", ".join(self.extra)
        else:
            verdict = "NOT reproduced: a catalogue generator is missing"
        return f"catalogue '{self.name}': dim {self.catalogue_dim}; discovered: dim {self.discovered_dim}; {verdict}"


def _vectors(fields) -> list[dict[int, Fraction]]:
    """Sparse exact vectors ``(A, b)`` flattened, one per field."""
    out = []
    for a, b in fields:
        flat = [*a, *b]
        out.append({i: Fraction(int(e.p), int(e.q)) for i, e in enumerate(flat) if e != 0})
    return out


def _rank(vectors: list[dict[int, Fraction]]) -> int:
    return len(independent(vectors))


def compare(alg: LieAlgebra, gauge: GaugeBase) -> Comparison:
    """Exact comparison of ``alg`` with the algebra of catalogue ``gauge`` (same coordinates)."""
    mine = _vectors([(c.A, c.b) for c in alg.candidates])
    theirs = _vectors(gauge.affine_parts)
    contained = _rank(mine + theirs) == _rank(mine)
    new = {id(v) for v in independent(mine, seed=theirs)}
    extra = [lab for lab, v in zip(alg.labels, mine) if id(v) in new]
    try:
        red = alg.reduced()
    except GaugeError:  # the rank-reducing choice is not closed: no reduced comparison
        return Comparison(gauge.name, gauge.dim, alg.dim, contained, tuple(extra), alg.dim, False)
    rv = _vectors([(c.A, c.b) for c in red.candidates])
    same = red.dim == gauge.dim and _rank(rv + theirs) == _rank(rv) == gauge.dim
    return Comparison(gauge.name, gauge.dim, alg.dim, contained, tuple(extra), red.dim, same)


def rediscover(name: str, **options) -> tuple[LieAlgebra, Comparison]:
    """Discover the gauges of catalogue gauge ``name``'s reference layer and compare (exact)."""
    g = catalogue_gauge(name, **options)
    alg = discover(from_reference(f"catalogue:{name}", g.model, g.blocks))
    return alg, compare(alg, g)
