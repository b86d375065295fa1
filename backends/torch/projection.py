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

The structure is decided once by :mod:`gaugemath.backends._coupling` (shared with JAX). Why
orthogonal: a rotation generator ``AΘ`` (``A`` skew) against a column scale ``Θ[:, i]``
gives ``Σ_r Θ[r, i](AΘ)[r, i] = Θ[:, i]ᵀAΘ[:, i] = 0``; a class-axis translation against a
column scale gives ``Σ_r θ̃[r, i] = 0`` because the translation's frame centres the columns and is
applied after the scale (binding order). Both are checked numerically against the symbolic
core's composed projector in ``tests/test_torch_projection.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._coupling import Coupling
from .orbits import BoundFamily


class Projector:
    """Evaluates the coupling structure of :class:`~gaugemath.backends._coupling.Coupling` on tensors."""

    def __init__(self, families: list[BoundFamily], names: list[str], bases: list[int] | None = None,
                 balanced: bool = False):
        self.families = families
        self.coupling = Coupling(families, names, bases, balanced)
        self.components = self.coupling.components

    # ---------------------------------------------------------------- per step
    def factor(self, theta: list[Tensor], grams: list[Tensor] | None = None,
               masks: list[Tensor] | None = None) -> dict:
        """Everything that depends on ``θ̃`` only: Gram diagonals (computed unless given),
        eigendecompositions, Schur factors. ``"info"`` holds, per coupled component, Cholesky's
        status (``0``: positive definite); it is not checked here, which would be a host sync per
        component, but with the update (``DDCAdam(nonfinite="raise")``). ``masks[f]``: units without
        vertical space (degenerate orbits), decoupled from their partners."""
        grams = [fam.gram(theta) for fam in self.families] if grams is None else grams
        heads = {f: torch.linalg.eigh(grams[f]) for f, fam in enumerate(self.families) if fam.kind == "head"}
        schur, infos = [], []
        for comp in self.components:  # in float64 whatever the work dtype: S = D_A − E D_B⁻¹ Eᵀ cancels
            d_a = torch.cat([grams[f] for f in comp.side_a]).to(torch.float64)
            d_b = torch.cat([grams[f] for f in comp.side_b]).to(torch.float64)
            off_a, off_b = comp.offsets(self.families)
            e, w = self._coupling_matrix(comp, theta, off_a, off_b, d_a.shape[0], d_b.shape[0])
            ones = d_a.new_ones
            keep_a = ones(d_a.shape) if masks is None else (~torch.cat([masks[f] for f in comp.side_a])).to(d_a.dtype)
            keep_b = ones(d_b.shape) if masks is None else (~torch.cat([masks[f] for f in comp.side_b])).to(d_b.dtype)
            # a degenerate unit couples to nothing: E's rows and columns of masked units count as zero,
            # applied to the vectors (E diag(k_B/D_B) Eᵀ, then k_A on both sides) instead of to E itself
            m = (e * (keep_b / d_b)) @ e.T
            s = torch.diag(d_a) - (w * w) * (keep_a[:, None] * m * keep_a[None, :])
            chol, info = torch.linalg.cholesky_ex(s)  # no host sync; ``info`` is checked with the update
            schur.append((e, w, keep_a, keep_b, d_b, chol, off_a, off_b))
            infos.append(info)
        return {"grams": grams, "heads": heads, "schur": schur, "info": infos}

    def _coupling_matrix(self, comp, theta: list[Tensor], off_a: dict, off_b: dict, n_a: int,
                         n_b: int) -> tuple[Tensor, float]:
        """``(E₀, w)`` with ``E = w·E₀`` the off-diagonal Gram block ``⟨X_a, X_b⟩ = e_a e_b Σ θ̃[a, b]²`` (fp64).
        One edge (the usual case: a row and a column rescale of one matrix) is that matrix squared, in two
        passes, its sign kept as ``w``; several edges are summed into one block (``w = 1``)."""
        edges = list(comp.edge_weights(self.families))
        if len(edges) == 1:
            fa, fb, i, a_rows, w = edges[0]
            if self.families[fa].units == n_a and self.families[fb].units == n_b:
                sq = theta[i].to(torch.float64, copy=True)
                sq = sq.mul_(sq)
                return (sq if a_rows else sq.T), float(w)
        e = theta[0].new_zeros((n_a, n_b), dtype=torch.float64)
        for fa, fb, i, a_rows, w in edges:
            t = theta[i].to(torch.float64)
            sq = t * t if a_rows else (t * t).T
            sa, sb = off_a[fa], off_b[fb]
            e[sa : sa + self.families[fa].units, sb : sb + self.families[fb].units] += w * sq
        return e, 1.0

    def solve(self, fact: dict, rhs: list[Tensor]) -> list[Tensor]:
        """``Γ⁻¹ r``; ``rhs[f]`` is ``(units, R)`` (heads: skew ``(heads, d, d, R)``)."""
        out: list[Tensor | None] = [None] * len(self.families)
        coupled = self.coupling.coupled
        for f, fam in enumerate(self.families):
            if fam.kind == "head":
                lam, q = fact["heads"][f]
                c = torch.einsum("hia,hijr,hjb->habr", q, rhs[f], q)
                a = c / (lam[:, :, None, None] + lam[:, None, :, None])
                out[f] = torch.einsum("hai,hijr,hbj->habr", q, a, q)
            elif f not in coupled:
                out[f] = rhs[f] / fact["grams"][f][:, None]
        for comp, (e, w, keep_a, keep_b, d_b, chol, off_a, off_b) in zip(self.components, fact["schur"]):
            r_a = torch.cat([rhs[f] for f in comp.side_a])
            dtype = r_a.dtype
            r_a, r_b = r_a.to(e.dtype), torch.cat([rhs[f] for f in comp.side_b]).to(e.dtype)
            x_a = torch.cholesky_solve(r_a - (w * keep_a[:, None]) * (e @ (r_b * (keep_b / d_b)[:, None])), chol)
            x_b = (r_b - (w * keep_b[:, None]) * (e.T @ (x_a * keep_a[:, None]))) / d_b[:, None]
            for f in comp.side_a:
                out[f] = x_a[off_a[f] : off_a[f] + self.families[f].units].to(dtype)
            for f in comp.side_b:
                out[f] = x_b[off_b[f] : off_b[f] + self.families[f].units].to(dtype)
        return out  # type: ignore[return-value]
