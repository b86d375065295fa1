"""Numeric search for affine symmetry generators: the null space of ⟨∇_θ f, Aθ + b⟩ = 0.

An affine vector field ``X(θ) = Aθ + b`` (``A`` ``n×n``, ``b`` ``n``) generates a symmetry of the
outputs exactly when ``⟨∇_θ f_o(θ, x), Aθ + b⟩ = 0`` for every output ``o``, parameter ``θ`` and
input ``x``. Each sample ``(θ_p, x_p, o)`` gives one linear equation in the ``n² + n`` unknowns
``u = (A, b)``: its row is ``(g θᵀ, g)`` flattened, ``g = ∇_θ f_o``. The numerical null space of
enough random rows is a (float) basis of candidates; its dimension is an upper bound for the
algebra's dimension, up to the rank tolerance.

Rationalisation: the basis is brought to reduced row-echelon form with pivots chosen in a fixed
column order (off-diagonal ``A`` entries, then diagonal ones, then ``b``), so that scalings,
translations and mixings come out as separate, sparse generators, and every entry is rounded to
a fraction with a small denominator; then supports are shrunk exactly (:func:`sparsify`).
A row that does not round (irrational or ill-conditioned) is reported, never returned: only
exact candidates go on to the proof.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import sympy as sp

from ..errors import GaugeError
from .layer import Layer
from .sampling import sample_gradients

#: relative singular-value threshold below which a direction counts as invariant
RANK_TOL = 1e-8
#: the smallest kept singular value must exceed the largest null one by this factor
MIN_GAP = 1e3
#: largest denominator a rationalised coefficient may have
MAX_DENOMINATOR = 1000


@dataclass(frozen=True)
class Candidate:
    """An exact candidate generator ``X(θ) = A θ + b`` (rational ``A``: ``n×n``, ``b``: ``n×1``)."""

    A: sp.Matrix
    b: sp.Matrix


@dataclass(frozen=True)
class NullSpace:
    """Outcome of the numeric search.

    ``dim``: numerical null-space dimension; ``candidates``: a rationalised basis modulo the
    ``field_dependent`` directions ``θ_k T`` (``T`` a translation among the candidates: a symmetry
    because ``⟨∇f, θ_k T⟩ = θ_k ⟨∇f, T⟩``, moving along the same orbits, so not listed); fewer if some
    rows did not round; ``singular_gap``: ``(σ_null_max, σ_kept_min)``
    relative to ``σ_max`` (a clean gap is many orders of magnitude); ``equations``: rows used.
    """

    dim: int
    candidates: list[Candidate]
    unrounded: int
    singular_gap: tuple[float, float]
    equations: int
    unknowns: int
    dropped_points: int
    field_dependent: int = 0


def column_order(n: int, reverse: bool = False) -> np.ndarray:
    """Unknown indices (``A`` row-major, then ``b``) in RREF pivot preference: off-diagonal, diagonal, ``b``
    (coordinates in declaration order, or reversed within each section)."""
    sections = [[i * n + j for i in range(n) for j in range(n) if i != j], [i * n + i for i in range(n)],
                list(range(n * n, n * n + n))]
    return np.array([c for sec in sections for c in (sec[::-1] if reverse else sec)])


def equations(theta: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Rows ``(g θᵀ, g)`` for every point and output, normalised to unit length."""
    p, outs, n = grads.shape
    g = grads.reshape(p * outs, n)
    th = np.repeat(theta, outs, axis=0)
    rows = np.concatenate([(g[:, :, None] * th[:, None, :]).reshape(p * outs, n * n), g], axis=1)
    norms = np.linalg.norm(rows, axis=1)
    keep = norms > 0
    return rows[keep] / norms[keep, None]


def rref(basis: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Reduced row-echelon form of the rows of ``basis`` (``k×m``), pivoting in column order."""
    m = basis.copy()
    k = m.shape[0]
    row = 0
    for col in range(m.shape[1]):
        if row == k:
            break
        piv = row + int(np.argmax(np.abs(m[row:, col])))
        if abs(m[piv, col]) < tol:
            continue
        m[[row, piv]] = m[[piv, row]]
        m[row] /= m[row, col]
        for r in range(k):
            if r != row:
                m[r] -= m[r, col] * m[row]
        row += 1
    return m[:row]


def _axpy(r: dict[int, Fraction], c: Fraction, e: dict[int, Fraction]) -> dict[int, Fraction]:
    """``r − c·e`` for sparse exact vectors (zeros dropped)."""
    out = dict(r)
    for q, x in e.items():
        y = out.get(q, 0) - c * x
        if y:
            out[q] = y
        else:
            out.pop(q, None)
    return out


def independent(vectors: list[dict[int, Fraction]], seed: list[dict[int, Fraction]] = ()) -> list[dict[int, Fraction]]:
    """Greedy: keep each vector (in the given order) that is independent of those kept and of ``seed``
    (exact elimination; ``seed`` vectors are not returned)."""
    kept: list[dict[int, Fraction]] = []
    echelon: list[tuple[int, dict[int, Fraction]]] = []  # (pivot, row with row[pivot] = 1)
    for v in [*seed, *vectors]:
        r = dict(v)
        for piv, e in echelon:
            c = r.get(piv)
            if c:
                r = _axpy(r, c, e)
        if r:
            piv = min(r)
            echelon.append((piv, {q: x / r[piv] for q, x in r.items()}))
            kept.append(v)
    return kept[len(seed):]


def sparsify(vectors: list[dict[int, Fraction]], fixed: list[dict[int, Fraction]] = ()) -> list[dict[int, Fraction]]:
    """A basis of the same span (modulo ``fixed``) with smaller supports: replace ``v_i`` by ``v_i − c v_j``
    (``v_j`` another vector or a fixed one) while that strictly shrinks its support (exact; recovers
    per-unit generators from RREF rows that mix units)."""
    vs = [dict(v) for v in vectors]
    n_free = len(vs)
    vs += [dict(v) for v in fixed]
    improved = True
    while improved:
        improved = False
        for i, vi in enumerate(vs[:n_free]):
            for j, vj in enumerate(vs):
                if i == j or not vj:
                    continue
                for p in set(vi) & set(vj):
                    new = _axpy(vi, vi[p] / vj[p], vj)
                    if len(new) < len(vi):
                        vs[i] = vi = new
                        improved = True
                        break
    return vs[:n_free]


def null_space(lay: Layer, seed: int = 0, oversample: float = 1.5) -> NullSpace:
    """Numeric null space of the invariance conditions of ``lay``, rationalised (module docstring)."""
    n = len(lay.coordinates)
    unknowns = n * n + n
    points = int(np.ceil(oversample * unknowns / len(lay.outputs))) + 8
    rng = np.random.default_rng(seed)
    s = sample_gradients(lay, points, rng)
    # Outputs may be dependent (two-class log-softmax: both are functions of z0 − z1): a point then gives
    # fewer independent equations than outputs. Size the sample by the gradients' rank per point instead.
    per_point = max(int(np.linalg.matrix_rank(s.grads[i], tol=1e-9 * max(np.abs(s.grads[i]).max(), 1e-300)))
                    for i in range(min(8, len(s.grads))))
    need = int(np.ceil(oversample * unknowns / max(per_point, 1))) + 8
    if need > points:
        more = sample_gradients(lay, need - points, rng)
        s = type(s)(np.concatenate([s.theta, more.theta]), np.concatenate([s.grads, more.grads]),
                    s.dropped + more.dropped)
    rows = equations(s.theta, s.grads)
    _, sv, vt = np.linalg.svd(rows, full_matrices=rows.shape[0] < unknowns)
    sv = np.concatenate([sv, np.zeros(unknowns - len(sv))]) if len(sv) < unknowns else sv
    top = sv[0] if len(sv) and sv[0] > 0 else 1.0
    rel = sv / top
    null = rel < RANK_TOL
    dim = int(null.sum())
    gap = (float(rel[null].max()) if dim else 0.0, float(rel[~null].min()) if (~null).any() else float("inf"))
    if dim and gap[1] < MIN_GAP * max(gap[0], 1e-300):
        raise GaugeError(lay.name, None, f"numerical rank is ambiguous: singular values {gap[0]:.1e} (counted "
                         f"invariant) and {gap[1]:.1e} (not) are within a factor {MIN_GAP:.0e}; the layer is "
                         "ill-conditioned at these widths (e.g. a LayerNorm over 2 channels saturates); discover at "
                         "other widths or constants")
    pool: list[dict[int, Fraction]] = []
    for reverse in (False, True):  # RREF rows of both pivot orders: per-unit generators appear in one of them
        pool += _rationalised(vt[null], column_order(n, reverse)) if dim else []
    # constant translations T (A = 0) and their field-dependent multiples ℓ(θ)·T = (T e_kᵀ) θ (same orbits)
    shifts = independent(sorted([v for v in pool if min(v) >= n * n], key=len))
    dependent = [_outer(t, k, n) for t in shifts for k in range(n)]
    chosen = shifts + sparsify(independent(sorted(pool, key=len), seed=shifts + dependent), fixed=dependent)
    first = lambda row: min(q // n if q < n * n else q - n * n for q in row)  # noqa: E731 - first coordinate moved
    candidates = []
    for row in sorted(chosen, key=lambda r: (first(r), sorted(r))):
        u = [sp.S.Zero] * unknowns
        for pos, c in row.items():
            u[pos] = sp.Rational(c.numerator, c.denominator)
        candidates.append(Candidate(sp.Matrix(n, n, u[: n * n]), sp.Matrix(u[n * n :])))
    unrounded = dim - len(candidates) - len(dependent)
    return NullSpace(dim, candidates, unrounded, gap, rows.shape[0], unknowns, s.dropped, len(dependent))


def _rationalised(basis: np.ndarray, order: np.ndarray) -> list[dict[int, Fraction]]:
    """RREF rows of ``basis`` (columns permuted by ``order``) that round to small fractions, as sparse vectors."""
    out = []
    for v in rref(basis[:, order]):
        exact = [Fraction(float(c)).limit_denominator(MAX_DENOMINATOR) for c in v]
        if np.max(np.abs(np.array([float(c) for c in exact]) - v)) <= 1e-7:
            out.append({int(order[p]): c for p, c in enumerate(exact) if c})
    return out


def _outer(shift: dict[int, Fraction], k: int, n: int) -> dict[int, Fraction]:
    """The unknown vector of ``A = T e_kᵀ`` (``X(θ) = θ_k T``) for a translation ``T`` given by its ``b`` part."""
    return {(q - n * n) * n + k: c for q, c in shift.items()}
