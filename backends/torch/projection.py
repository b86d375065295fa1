"""Vertical projector of several orbit families at a canonical point: ``P_V = X Γ⁻¹ Xᵀ``.

At the canonical point ``θ̃`` the invariant metric is Euclidean, so ``Γ = XᵀX``. Families on
disjoint tensors are orthogonal; families sharing a tensor are orthogonal too except a row-scale
and a column-scale of the same matrix (e.g. a SwiGLU unit rescale on ``W_up`` rows and the
RMSNorm gain rescale on ``W_up`` columns), whose generators overlap entry-wise:
``⟨X_k, X_i⟩ = e_k e_i Σ_t θ̃_t[k, i]²``. The couplings form a bipartite graph (rows vs columns);
each connected component is solved exactly by the Schur complement on its smaller side,
``S = D_A − E D_B⁻¹ Eᵀ`` (Cholesky). Every other kind of sharing (a translation or rotation on
the same axis as a scale, two scales on one axis of one tensor) is refused when the projector is
built: it is not orthogonal, and this module does not solve it.

Why orthogonal: a rotation generator ``AΘ`` (``A`` skew) against a column scale ``Θ[:, i]``
gives ``Σ_r Θ[r, i](AΘ)[r, i] = Θ[:, i]ᵀAΘ[:, i] = 0``; a class-axis translation against a
column scale gives ``Σ_r θ̃[r, i] = 0`` because the translation's frame centres the columns and is
applied after the scale (binding order). Both are checked numerically against the symbolic
core's composed projector in ``tests/test_torch_projection.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gaugemath.errors import GaugeError

from .orbits import BoundFamily


@dataclass
class _Component:
    side_a: list[int]  # family indices (Schur side, the smaller one)
    side_b: list[int]
    edges: list[tuple[int, int, int, bool]]  # (family a, family b, tensor index, a owns rows)


class Projector:
    """Static structure (which families couple) for a list of bound families."""

    def __init__(self, families: list[BoundFamily], names: list[str]):
        self.families = families
        owners: dict[int, list[tuple[int, str]]] = {}
        for f, fam in enumerate(families):
            for s, i in fam.members():
                owners.setdefault(i, []).append((f, s.axis))
        adjacency: dict[int, set[int]] = {f: set() for f in range(len(families))}
        edges = []
        for i, fs in owners.items():
            for x in range(len(fs)):
                for y in range(x + 1, len(fs)):
                    (f, ax), (g, ay) = fs[x], fs[y]
                    kinds = {families[f].kind, families[g].kind}
                    if f == g:
                        continue
                    if kinds == {"scale"} and {ax, ay} == {"rows", "cols"}:
                        edges.append((f, g, i, ax == "rows"))
                        adjacency[f].add(g)
                        adjacency[g].add(f)
                    elif self._orthogonal(families[f], ax, families[g], ay, f, g):
                        continue
                    else:
                        raise GaugeError(families[g].family.gauge, names[i],
                                         f"parameter is bound to '{families[f].name}' ({ax}) and "
                                         f"'{families[g].name}' ({ay}): these orbit families are not orthogonal "
                                         "and their joint projector is not supported")
        self.components = self._components(adjacency, edges)

    @staticmethod
    def _orthogonal(fa: BoundFamily, ax: str, fb: BoundFamily, ay: str, a: int, b: int) -> bool:
        pair = {(fa.kind, ax), (fb.kind, ay)}
        if ("scale", "cols") in pair and ({("plane", "rows"), ("head", "rows")} & pair):
            return True
        if ("scale", "cols") in pair and ("translate", "cols") in pair:
            first = fa if a < b else fb  # the translation must be canonicalised after the scale
            return first.kind == "scale"
        return False

    def _components(self, adjacency, edges) -> list[_Component]:
        seen, out = set(), []
        for start in range(len(self.families)):
            if start in seen or not adjacency[start]:
                continue
            colour, stack = {start: 0}, [start]
            while stack:
                f = stack.pop()
                for g in adjacency[f]:
                    if g not in colour:
                        colour[g] = 1 - colour[f]
                        stack.append(g)
                    elif colour[g] == colour[f]:
                        raise GaugeError(self.families[g].family.gauge, None,
                                         f"orbit families '{self.families[f].name}' and '{self.families[g].name}' "
                                         "couple in an odd cycle; the joint projector is not supported")
            seen |= set(colour)
            sides = [sorted(f for f, c in colour.items() if c == s) for s in (0, 1)]
            sizes = [sum(self.families[f].units for f in side) for side in sides]
            a, b = (sides[0], sides[1]) if sizes[0] <= sizes[1] else (sides[1], sides[0])
            comp_edges = []
            for f, g, i, f_rows in edges:
                if f in colour:
                    comp_edges.append((f, g, i, f_rows) if f in a else (g, f, i, not f_rows))
            out.append(_Component(a, b, comp_edges))
        return out

    # ---------------------------------------------------------------- per step
    def factor(self, theta: list[Tensor]) -> dict:
        """Everything that depends on ``θ̃`` only: Gram diagonals, eigendecompositions, Schur factors."""
        grams = [fam.gram(theta) for fam in self.families]
        heads = {f: torch.linalg.eigh(grams[f]) for f, fam in enumerate(self.families) if fam.kind == "head"}
        schur = []
        for comp in self.components:
            d_a = torch.cat([grams[f] for f in comp.side_a])
            d_b = torch.cat([grams[f] for f in comp.side_b])
            off_a = _offsets([self.families[f].units for f in comp.side_a], comp.side_a)
            off_b = _offsets([self.families[f].units for f in comp.side_b], comp.side_b)
            e = d_a.new_zeros(d_a.shape[0], d_b.shape[0])
            for fa, fb, i, a_rows in comp.edges:
                fam_a, fam_b = self.families[fa], self.families[fb]
                t = theta[i]
                sq = t * t if a_rows else (t * t).T
                ra = _role_of(fam_a, i)
                rb = _role_of(fam_b, i)
                w = fam_a._coefficient("dot", ra) * fam_b._coefficient("dot", rb)
                sa, sb = off_a[fa], off_b[fb]
                e[sa : sa + fam_a.units, sb : sb + fam_b.units] += w * sq
            s = torch.diag(d_a) - (e / d_b) @ e.T
            schur.append((e, d_b, torch.linalg.cholesky(s), off_a, off_b))
        return {"grams": grams, "heads": heads, "schur": schur}

    def solve(self, fact: dict, rhs: list[Tensor]) -> list[Tensor]:
        """``Γ⁻¹ r``; ``rhs[f]`` is ``(units, R)`` (heads: skew ``(heads, d, d, R)``)."""
        out: list[Tensor | None] = [None] * len(self.families)
        coupled = {f for comp in self.components for f in comp.side_a + comp.side_b}
        for f, fam in enumerate(self.families):
            if fam.kind == "head":
                lam, q = fact["heads"][f]
                c = torch.einsum("hia,hijr,hjb->habr", q, rhs[f], q)
                a = c / (lam[:, :, None, None] + lam[:, None, :, None])
                out[f] = torch.einsum("hai,hijr,hbj->habr", q, a, q)
            elif f not in coupled:
                out[f] = rhs[f] / fact["grams"][f][:, None]
        for comp, (e, d_b, chol, off_a, off_b) in zip(self.components, fact["schur"]):
            r_a = torch.cat([rhs[f] for f in comp.side_a])
            r_b = torch.cat([rhs[f] for f in comp.side_b])
            x_a = torch.cholesky_solve(r_a - e @ (r_b / d_b[:, None]), chol)
            x_b = (r_b - e.T @ x_a) / d_b[:, None]
            for f in comp.side_a:
                out[f] = x_a[off_a[f] : off_a[f] + self.families[f].units]
            for f in comp.side_b:
                out[f] = x_b[off_b[f] : off_b[f] + self.families[f].units]
        return out  # type: ignore[return-value]


def _offsets(sizes: list[int], ids: list[int]) -> dict[int, int]:
    out, acc = {}, 0
    for f, n in zip(ids, sizes):
        out[f] = acc
        acc += n
    return out


def _role_of(fam: BoundFamily, index: int) -> str:
    for s, i in fam.members():
        if i == index:
            return s.role
    raise KeyError(index)  # pragma: no cover
