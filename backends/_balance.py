"""What the jointly balanced frame (``frames="balanced"``) is taken over and in which order: any backend.

The math and the solve are in :mod:`gaugemath.backends.torch.balance` (JAX: its twin); here, decided
from the families alone (no arrays): which scale families have a minimum-norm point, and the
canonicalisation order — translations first (the balance then sees centred columns, which a column
scaling keeps centred), every scale family next, rotations last (they keep every column norm the
balance reads).
"""

from __future__ import annotations

#: kinds of family canonicalised before / after the scaling part, in ``frames="balanced"``
BEFORE, AFTER = ("translate",), ("plane", "head")


def two_sided(fam) -> bool:
    """A scale family with slices of both signs of exponent, all ``±1``: its orbit has a minimum-norm
    point (a one-sided scale, e.g. a producer feeding a norm, has none: it keeps its own frame)."""
    return fam.kind == "scale" and {s.exponent for s in fam.family.slices} == {1, -1}


def balanced_order(families) -> list[int]:
    """The canonicalisation order of ``frames="balanced"``: translations, then every scale family, then
    rotations (each group in binding order). Returns the permutation of family indices."""
    first = [f for f, fam in enumerate(families) if fam.kind in BEFORE]
    last = [f for f, fam in enumerate(families) if fam.kind in AFTER]
    return first + [f for f, fam in enumerate(families) if f not in first and f not in last] + last
