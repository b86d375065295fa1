"""Library-agnostic description of an orbit family, as emitted by ``gaugemath codegen``.

A *family* is one group coordinate per unit ``k`` (hidden unit, channel, column, RoPE plane,
head) acting on slice ``k`` of each block it touches. ``frame``, ``gram`` and ``coords`` are
generated element-wise functions of named per-unit statistics (see :mod:`gaugemath.codegen`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Slice:
    """Block ``role`` carries coordinate ``k`` on slice ``k`` of ``axis`` (``rows``, ``cols``, ``all``)."""

    role: str
    axis: str
    exponent: int


@dataclass(frozen=True)
class Family:
    """Generated description of one orbit family (see :mod:`gaugemath.codegen`)."""

    key: str
    gauge: str
    kind: str  # "scale" | "translate" | "plane" | "head"
    slices: tuple[Slice, ...]
    frame: Callable | None
    gram: Callable | None
    coords: Callable | None
    stats: dict[str, list[str]] = field(default_factory=dict)

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(s.role for s in self.slices)

    def slice(self, role: str) -> Slice:
        for s in self.slices:
            if s.role == role:
                return s
        raise KeyError(role)
