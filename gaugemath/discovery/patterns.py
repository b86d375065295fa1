"""Recognise the per-unit / per-channel / per-plane pattern of affine generators.

A generator ``X(θ) = Aθ + b`` is read block by block. On a block ``B`` (``r×c``) it is

* ``scale``: ``A`` diagonal on ``B`` with one constant exponent ``e`` on a slice, ``b = 0`` there
  (``B[k, :] → α^e B[k, :]`` for axis ``rows``; ``B[:, k]`` for ``cols``; the whole block for ``all``);
* ``shift``: ``A = 0`` on ``B``, ``b`` constant ``e`` on a slice (``B[:, k] → B[:, k] + e v``);
* ``rotate``: ``A`` skew on the row pair ``(2k, 2k+1)`` with coefficient ``e = ±1`` in every column
  (``B[2k:2k+2, :] → R(φ) B[2k:2k+2, :]``);
* ``mix``: anything else (e.g. ``gl(h)`` acting on the rows of one block and the columns of another).

Generators whose blocks are all ``scale`` (or all ``shift``, or all ``rotate``) on slices with
one common unit index ``k`` form a *family* with one member per unit: the per-unit pattern. Its
signature (blocks, kinds, axes, exponents) does not mention the width, which is what lets
:mod:`gaugemath.discovery.general` compare instances of different widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ..gauge import Params

KINDS = ("scale", "shift", "rotate")


@dataclass(frozen=True)
class SliceAction:
    """How one generator acts on one block: ``kind`` on slice ``unit`` of ``axis`` with coefficient ``coef``."""

    block: str
    kind: str
    axis: str
    unit: int
    coef: sp.Rational


@dataclass(frozen=True)
class Family:
    """Generators sharing one signature, one per unit (``members[k]`` is a generator index)."""

    kind: str  # "scale" | "shift" | "rotate" | "mix"
    signature: tuple[tuple[str, str, str, sp.Rational], ...]
    members: tuple[int, ...]
    units: tuple[int, ...]

    def describe(self) -> str:
        """E.g. ``scale: W_in[k, :]·α, b_in[k]·α, W_out[:, k]·α^-1``."""
        if self.kind == "mix":
            return f"mixing ({len(self.members)} generators, not of a per-unit form)"
        parts = []
        for block, kind, axis, coef in self.signature:
            where = {"rows": f"{block}[k, :]", "cols": f"{block}[:, k]", "all": block,
                     "planes": f"{block}[2k:2k+2, :]"}[axis]
            if kind == "scale":
                parts.append(f"{where}·α" + ("" if coef == 1 else f"^{coef}"))
            elif kind == "shift":
                parts.append(f"{where} + " + ("" if coef == 1 else f"{coef}·") + "v")
            else:
                parts.append(f"{where} rotated by {'' if coef == 1 else '-'}φ")
        return f"{self.kind}: " + ", ".join(parts)


def _offsets(blocks: Params) -> dict[str, tuple[int, int, int]]:
    out, start = {}, 0
    for name, m in blocks.items():
        out[name] = (start, m.rows, m.cols)
        start += m.rows * m.cols
    return out


def _slice_of(support: set[tuple[int, int]], rows: int, cols: int) -> tuple[str, int] | None:
    """``(axis, unit)`` if ``support`` is exactly one row, one column, or the whole block."""
    if cols == 1 and rows > 1 and len(support) == 1:
        return "rows", next(iter(support))[0]
    rs, cs = {i for i, _ in support}, {j for _, j in support}
    if len(rs) == 1 and support == {(next(iter(rs)), j) for j in range(cols)} and rows > 1:
        return "rows", next(iter(rs))
    if len(cs) == 1 and support == {(i, next(iter(cs))) for i in range(rows)} and cols > 1:
        return "cols", next(iter(cs))
    if len(support) == rows * cols:
        return "all", 0
    k = min(rs)
    if rows > 2 and k % 2 == 0 and support == {(i, j) for i in (k, k + 1) for j in range(cols)}:
        return "planes", k // 2
    return None


def _block_action(name: str, a: sp.Matrix, b: sp.Matrix, start: int, rows: int, cols: int) -> SliceAction | None:
    """The :class:`SliceAction` of ``(A, b)`` on one block, or ``None`` (``mix``). ``A``/``b`` already restricted."""
    idx = lambda i, j: i * cols + j  # noqa: E731
    n = rows * cols
    diag = [a[i, i] for i in range(n)]
    off = any(a[i, j] != 0 for i in range(n) for j in range(n) if i != j)
    if not off and any(diag) and not any(b):
        support = {(i, j) for i in range(rows) for j in range(cols) if diag[idx(i, j)] != 0}
        coefs = {diag[idx(i, j)] for i, j in support}
        where = _slice_of(support, rows, cols)
        return SliceAction(name, "scale", *where, coefs.pop()) if where and len(coefs) == 1 else None
    if not off and not any(diag) and any(b):
        support = {(i, j) for i in range(rows) for j in range(cols) if b[idx(i, j)] != 0}
        coefs = {b[idx(i, j)] for i, j in support}
        where = _slice_of(support, rows, cols)
        return SliceAction(name, "shift", *where, coefs.pop()) if where and len(coefs) == 1 else None
    if off and not any(diag) and not any(b) and rows % 2 == 0:
        pairs = {i // 2 for i in range(rows) for j in range(cols)
                 if any(a[idx(i, j), m] != 0 for m in range(n)) or any(a[m, idx(i, j)] != 0 for m in range(n))}
        if len(pairs) != 1:
            return None
        k = pairs.pop()
        s = a[idx(2 * k + 1, 0), idx(2 * k, 0)]
        expect = sp.zeros(n, n)
        for j in range(cols):
            expect[idx(2 * k + 1, j), idx(2 * k, j)], expect[idx(2 * k, j), idx(2 * k + 1, j)] = s, -s
        return SliceAction(name, "rotate", "planes", k, s) if s in (1, -1) and a == expect else None
    return None


def classify(blocks: Params, A: sp.Matrix, b: sp.Matrix) -> tuple[SliceAction, ...] | None:
    """Per-block actions of one generator, or ``None`` if it is not of a per-unit form."""
    offs = _offsets(blocks)
    acts = []
    touched = [name for name, (s, r, c) in offs.items()
               if any(e != 0 for e in A[s : s + r * c, :]) or any(e != 0 for e in b[s : s + r * c, 0])]
    for name in touched:
        s, r, c = offs[name]
        rows = slice(s, s + r * c)
        outside = [j for j in range(A.cols) if not s <= j < s + r * c]
        if any(A[rows, j] != sp.zeros(r * c, 1) for j in outside):
            return None  # this block's field depends on another block
        act = _block_action(name, A[rows, rows], b[rows, 0], s, r, c)
        if act is None:
            return None
        acts.append(act)
    kinds, units = {a.kind for a in acts}, {a.unit for a in acts}
    return tuple(acts) if len(kinds) == 1 and len(units) == 1 else None


def families(blocks: Params, generators: list[tuple[sp.Matrix, sp.Matrix]]) -> list[Family]:
    """Group generators into per-unit families (in order of first appearance), the rest into one ``mix``."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    mix = []
    for g, (A, b) in enumerate(generators):
        acts = classify(blocks, A, b)
        if acts is None:
            mix.append(g)
            continue
        sig = tuple((x.block, x.kind, x.axis, x.coef) for x in acts)
        groups.setdefault(sig, []).append((acts[0].unit, g))
    out = [Family(sig[0][1], sig, tuple(g for _, g in sorted(m)), tuple(u for u, _ in sorted(m)))
           for sig, m in groups.items()]
    if mix:
        out.append(Family("mix", (), tuple(mix), ()))
    return out
