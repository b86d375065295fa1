"""Matrix Lie groups that act as gauges.

Every group is given in a faithful matrix representation, so that the product in the
group is the matrix product and the Lie algebra is spanned by matrices ``ξ_a`` (tangents
at the identity). For the proofs each group also supplies a *generic element*: a rational
parametrisation by fresh symbols (Cayley transform for rotations), so that identities in
the group parameters reduce to exact rational-function identities, plus representatives
of its other connected components (sign flips, reflections).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

#: How a group parameter symbol is sampled numerically.
POSITIVE, REAL = "positive", "real"


@dataclass(frozen=True)
class MatrixGroup:
    """A matrix Lie group ``G ⊂ GL(m)`` with a basis of its Lie algebra.

    Attributes:
        name: human-readable name, e.g. ``"R_{>0}^3"``.
        identity: the ``m×m`` identity of the representation.
        basis: Lie-algebra basis ``ξ_a`` (``m×m`` matrices), ``dim = len(basis)``.
        labels: one label per basis element (used in printed generators).
        generic: ``generic(prefix) -> (g, kinds)``: an element of the identity component
            in a rational parametrisation by symbols named after ``prefix``; ``kinds`` maps
            each symbol to how it is sampled (``"positive"`` or ``"real"``).
        components: representatives of the non-identity connected components.
    """

    name: str
    identity: sp.Matrix
    basis: tuple[sp.Matrix, ...]
    labels: tuple[str, ...]
    generic: Callable[[str], tuple[sp.Matrix, dict[sp.Symbol, str]]]
    components: tuple[sp.Matrix, ...] = field(default=())

    @property
    def dim(self) -> int:
        return len(self.basis)

    def inverse(self, g: sp.Matrix) -> sp.Matrix:
        return g.inv().applyfunc(sp.cancel)

    def structure_constants(self) -> dict[tuple[int, int], tuple[sp.Expr, ...]]:
        """``c_ab^c`` with ``[ξ_a, ξ_b] = Σ_c c_ab^c ξ_c`` for ``a < b`` (exact).

        Raises ``ValueError`` if a commutator leaves the span (the basis is not closed).
        """
        flat = sp.Matrix.hstack(*[b.reshape(b.rows * b.cols, 1) for b in self.basis])
        out = {}
        for a in range(self.dim):
            for b in range(a + 1, self.dim):
                comm = self.basis[a] * self.basis[b] - self.basis[b] * self.basis[a]
                out[(a, b)] = _coordinates(flat, comm.reshape(comm.rows * comm.cols, 1), self.name)
        return out


def _coordinates(flat: sp.Matrix, vec: sp.Matrix, where: str) -> tuple[sp.Expr, ...]:
    """Exact coordinates ``c`` of ``vec`` in the columns of ``flat``."""
    if all(e == 0 for e in vec):
        return tuple(sp.S.Zero for _ in range(flat.cols))
    sol, params = flat.gauss_jordan_solve(vec)
    if params.shape[0]:
        sol = sol.subs({p: 0 for p in params})
    if flat * sol != vec:
        raise ValueError(f"{where}: bracket leaves the span of the basis")
    return tuple(sol)


def _unit(m: int, i: int, j: int) -> sp.Matrix:
    e = sp.zeros(m, m)
    e[i, j] = 1
    return e


def positive_scalings(n: int, *, signed: bool = False) -> MatrixGroup:
    """``(R_{>0})^n`` (or ``(R_{≠0})^n`` if ``signed``) as positive diagonal matrices.

    Lie algebra: diagonal matrices, basis ``E_kk``. The signed group has the sign flips
    ``diag(±1)`` as component representatives (one flip per coordinate suffices).
    """

    def generic(prefix: str):
        a = sp.symbols(f"{prefix}_1:{n + 1}", positive=True)
        return sp.diag(*a), {s: POSITIVE for s in a}

    comps = ()
    if signed:
        comps = tuple(sp.diag(*[(-1 if j == k else 1) for j in range(n)]) for k in range(n))
    name = f"R_{{!=0}}^{n}" if signed else f"R_{{>0}}^{n}"
    return MatrixGroup(
        name=name,
        identity=sp.eye(n),
        basis=tuple(_unit(n, k, k) for k in range(n)),
        labels=tuple(f"scale[{k}]" for k in range(n)),
        generic=generic,
        components=comps,
    )


def translations(n: int) -> MatrixGroup:
    """``(R^n, +)`` as unipotent matrices ``E(v) = [[1, vᵀ], [0, I_n]]``; ``E(v)E(w) = E(v+w)``."""

    def generic(prefix: str):
        v = sp.symbols(f"{prefix}_1:{n + 1}", real=True)
        g = sp.eye(n + 1)
        for j, s in enumerate(v):
            g[0, j + 1] = s
        return g, {s: REAL for s in v}

    return MatrixGroup(
        name=f"(R^{n}, +)",
        identity=sp.eye(n + 1),
        basis=tuple(_unit(n + 1, 0, j + 1) for j in range(n)),
        labels=tuple(f"shift[{j}]" for j in range(n)),
        generic=generic,
    )


def cayley_rotation_2d(t: sp.Expr) -> sp.Matrix:
    """Rational parametrisation of SO(2): ``R(t) = [[1-t², -2t], [2t, 1-t²]] / (1+t²)``."""
    return sp.Matrix([[1 - t**2, -2 * t], [2 * t, 1 - t**2]]) / (1 + t**2)


def plane_rotations(planes: int) -> MatrixGroup:
    """``SO(2)^p``: block-diagonal rotations, one per 2-plane ``(2j, 2j+1)``.

    Lie algebra basis: ``J_j = E_{2j+1,2j} - E_{2j,2j+1}`` (the generator of plane ``j``).
    """
    d = 2 * planes

    def generic(prefix: str):
        t = sp.symbols(f"{prefix}_1:{planes + 1}", real=True)
        return sp.diag(*[cayley_rotation_2d(s) for s in t]), {s: REAL for s in t}

    return MatrixGroup(
        name=f"SO(2)^{planes}",
        identity=sp.eye(d),
        basis=tuple(_unit(d, 2 * j + 1, 2 * j) - _unit(d, 2 * j, 2 * j + 1) for j in range(planes)),
        labels=tuple(f"plane[{j}]" for j in range(planes)),
        generic=generic,
    )


def orthogonal(d: int) -> MatrixGroup:
    """``O(d)``; generic element by the Cayley transform ``(I - A)^{-1}(I + A)`` of a skew ``A``.

    Lie algebra basis: ``E_ij - E_ji`` (``i < j``), so ``[ , ]`` gives ``so(d)``.
    The reflection ``diag(-1, 1, …)`` represents the other component.
    """
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]

    def generic(prefix: str):
        s = sp.symbols(f"{prefix}_1:{len(pairs) + 1}", real=True)
        a = sp.zeros(d, d)
        for (i, j), x in zip(pairs, s):
            a[i, j], a[j, i] = x, -x
        g = ((sp.eye(d) - a).inv() * (sp.eye(d) + a)).applyfunc(sp.cancel)
        return g, {x: REAL for x in s}

    return MatrixGroup(
        name=f"O({d})",
        identity=sp.eye(d),
        basis=tuple(_unit(d, i, j) - _unit(d, j, i) for i, j in pairs),
        labels=tuple(f"rot[{i},{j}]" for i, j in pairs),
        generic=generic,
        components=(sp.diag(-1, *([1] * (d - 1))),),
    )


def direct_sum(groups: list[MatrixGroup], labels: list[str]) -> MatrixGroup:
    """``G_1 × … × G_r`` acting block-diagonally (e.g. one ``O(d_head)`` per attention head).

    The Lie algebra basis is the union of the embedded factor bases (labelled ``label:…``);
    the component representatives are those of each factor, embedded.
    """
    sizes = [g.identity.rows for g in groups]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    total = sum(sizes)

    def embed(i: int, m: sp.Matrix) -> sp.Matrix:
        out = sp.eye(total) if m.is_square and m == groups[i].identity else sp.zeros(total, total)
        out[offsets[i] : offsets[i] + sizes[i], offsets[i] : offsets[i] + sizes[i]] = m
        return out

    def generic(prefix: str):
        parts, kinds = [], {}
        for i, g in enumerate(groups):
            e, k = g.generic(f"{prefix}{i}")
            parts.append(e)
            kinds.update(k)
        return sp.diag(*parts), kinds

    def embed_component(i: int, c: sp.Matrix) -> sp.Matrix:
        out = sp.eye(total)
        out[offsets[i] : offsets[i] + sizes[i], offsets[i] : offsets[i] + sizes[i]] = c
        return out

    return MatrixGroup(
        name=" × ".join(g.name for g in groups),
        identity=sp.eye(total),
        basis=tuple(embed(i, b) for i, g in enumerate(groups) for b in g.basis),
        labels=tuple(f"{lab}:{b}" for lab, g in zip(labels, groups) for b in g.labels),
        generic=generic,
        components=tuple(embed_component(i, c) for i, g in enumerate(groups) for c in g.components),
    )
