"""Vertical projector of several orbit families at a canonical point: ``P_V = X Γ⁻¹ Xᵀ``.

At the canonical point ``θ̃`` the invariant metric is Euclidean, so ``Γ = XᵀX``. Families on
disjoint tensors are orthogonal; families sharing a tensor are orthogonal too except a row-scale
and a column-scale of the same matrix (e.g. a SwiGLU unit rescale on ``W_up`` rows and the
RMSNorm gain rescale on ``W_up`` columns), whose generators overlap entry-wise:
``⟨X_k, X_i⟩ = e_k e_i Σ_t θ̃_t[k, i]²``. The couplings form a bipartite graph (rows vs columns);
each connected component is solved through the Schur complement on its smaller side,
``S = D_A − E D_B⁻¹ Eᵀ``: in eager mode by conjugate gradients preconditioned with ``diag(S)``
(:func:`_pcg`: two products with ``E`` per iteration, ``O(n_A n_B)``, against ``O(n_A² n_B)`` for forming
``S``; ``cond(S)`` measured 1.4 on ``gpt_small_cpu``, 6 iterations to 1e-16), to the round-off floor,
with ``S`` formed and Cholesky-factored if it does not converge; under ``torch.compile`` (no host reads)
directly by that factorisation. Every other kind of sharing (a translation or rotation on
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
        self.groups = self._groups()  # decided once (a lazily filled cache would change torch.compile's guards)

    # ---------------------------------------------------------------- per step
    def factor(self, theta: list[Tensor], grams: list[Tensor] | None = None,
               masks: list[Tensor] | None = None) -> dict:
        """Everything that depends on ``θ̃`` only: Gram diagonals (computed unless given),
        eigendecompositions, the coupled components' blocks (:class:`_Schur`, components of one shape
        stacked: a layer stack is one batched solve; factored here only under ``torch.compile``, else
        solved by conjugate gradients in :meth:`solve`). ``"info"`` holds the status of every Cholesky
        factorisation made (``0``: positive definite; ``"info_of"``: its component), appended to by
        :meth:`solve` when it factors; it is not checked here, which would be a host sync per component,
        but with the update (``DDCAdam(nonfinite="raise")``). ``masks[f]``: units without vertical space
        (degenerate orbits), decoupled from their partners."""
        grams = [fam.gram(theta) for fam in self.families] if grams is None else grams
        heads = {f: torch.linalg.eigh(grams[f]) for f, fam in enumerate(self.families) if fam.kind == "head"}
        blocks, infos, which = [], [], []
        for group in self.groups:  # in float64 whatever the work dtype: S = D_A − E D_B⁻¹ Eᵀ cancels
            comps = [self.components[k] for k in group]
            d_a, d_b = _side(grams, comps, "side_a").to(torch.float64), _side(grams, comps, "side_b").to(torch.float64)
            keep_a = torch.ones_like(d_a) if masks is None else (~_side(masks, comps, "side_a")).to(d_a.dtype)
            keep_b = torch.ones_like(d_b) if masks is None else (~_side(masks, comps, "side_b")).to(d_b.dtype)
            # a degenerate unit couples to nothing: E's rows and columns of masked units count as zero,
            # applied to the vectors (E diag(k_B/D_B) Eᵀ, then k_A on both sides) instead of to E itself
            e, w = self._coupling_matrix(comps, theta)
            block = _Schur(e, w, d_a, d_b, keep_a, keep_b)
            if torch.compiler.is_compiling():
                infos += list(block.factor().unbind(0))  # no host sync; checked with the update
                which += group
            blocks.append(block)
        return {"grams": grams, "heads": heads, "schur": blocks, "info": infos, "info_of": which}

    def _groups(self) -> list[list[int]]:
        """Coupled components of one shape (the same families in every layer of a stack), in order."""
        by: dict = {}
        for k, comp in enumerate(self.components):
            edges = list(comp.edge_weights(self.families))
            single = len(edges) == 1 and len(comp.side_a) == len(comp.side_b) == 1
            key = (tuple(self.families[f].units for f in comp.side_a),
                   tuple(self.families[f].units for f in comp.side_b),
                   (edges[0][3], edges[0][4]) if single else ("edges", k))
            by.setdefault(key, []).append(k)
        return list(by.values())

    def _coupling_matrix(self, comps, theta: list[Tensor]) -> tuple[Tensor, float]:
        """``(E₀, w)``: ``E = w·E₀`` is the off-diagonal Gram block ``⟨X_a, X_b⟩ = e_a e_b Σ θ̃[a, b]²`` of each
        component, stacked ``(L, n_A, n_B)`` (in the work dtype: the products with it are the solve's memory
        traffic; formed ``S`` and the vectors are fp64). One edge per component (the usual case: a row and a
        column rescale of one matrix) is that matrix squared, stacked in two passes, its sign kept as ``w``;
        a component of several edges (a group of one) sums them into one block (``w = 1``)."""
        edges = [list(c.edge_weights(self.families)) for c in comps]
        if all(len(e) == 1 for e in edges) and all(len(c.side_a) == len(c.side_b) == 1 for c in comps):
            a_rows, w = edges[0][0][3], edges[0][0][4]
            sq = torch.stack([theta[e[0][2]] for e in edges])
            sq = sq.mul_(sq)
            return (sq if a_rows else sq.transpose(1, 2)), float(w)
        (comp,) = comps
        off_a, off_b = comp.offsets(self.families)
        n_a = sum(self.families[f].units for f in comp.side_a)
        n_b = sum(self.families[f].units for f in comp.side_b)
        e = theta[0].new_zeros((n_a, n_b))
        for fa, fb, i, a_rows, w in edges[0]:
            t = theta[i]
            sq = t * t if a_rows else (t * t).T
            sa, sb = off_a[fa], off_b[fb]
            e[sa : sa + self.families[fa].units, sb : sb + self.families[fb].units] += w * sq
        return e[None], 1.0

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
        for group, block in zip(self.groups, fact["schur"]):
            comps = [self.components[k] for k in group]
            dtype = rhs[comps[0].side_a[0]].dtype
            r_a, r_b = _side(rhs, comps, "side_a").to(torch.float64), _side(rhs, comps, "side_b").to(torch.float64)
            r = r_a - block.e_b(r_b / block.d_b[..., None])
            if block.chol is None:
                x_a = _pcg(block.apply, block.diagonal(), r, torch.finfo(block.e.dtype).eps)
                if x_a is None:  # not at the floor in MAX_CG iterations: S formed and factored from now on
                    fact["info"] += list(block.factor().unbind(0))
                    fact["info_of"] += group
            if block.chol is not None:
                x_a = torch.cholesky_solve(r, block.chol)
            x_b = (r_b - block.et_a(x_a)) / block.d_b[..., None]
            for comp, xa, xb in zip(comps, x_a, x_b):
                off_a, off_b = comp.offsets(self.families)
                for f in comp.side_a:
                    out[f] = xa[off_a[f] : off_a[f] + self.families[f].units].to(dtype)
                for f in comp.side_b:
                    out[f] = xb[off_b[f] : off_b[f] + self.families[f].units].to(dtype)
        return out  # type: ignore[return-value]

#: conjugate gradients on a Schur complement: at most this many iterations before ``S`` is factored instead
MAX_CG = 40


def _side(values: list[Tensor], comps, side: str) -> Tensor:
    """Per-family ``values`` of one side of each component, concatenated, stacked over the components."""
    return torch.stack([torch.cat([values[f] for f in getattr(c, side)]) for c in comps])


class _Schur:
    """Coupled components' Gram blocks at ``θ̃``, stacked over ``L`` components of one shape: ``D_A (L, n_A)``,
    ``D_B (L, n_B)`` (diagonal, fp64), ``E = w·E₀`` ``(L, n_A, n_B)`` with the degenerate units' rows and
    columns counted as zero (``keep`` ∈ {0, 1}), and ``S = D_A − E D_B⁻¹ Eᵀ`` applied without being formed
    (``S x``: two batched products with ``E₀``)."""

    def __init__(self, e: Tensor, w: float, d_a: Tensor, d_b: Tensor, keep_a: Tensor, keep_b: Tensor):
        self.e, self.w, self.d_a, self.d_b, self.keep_a, self.keep_b = e, w, d_a, d_b, keep_a, keep_b
        self.chol: Tensor | None = None

    def e_b(self, y: Tensor) -> Tensor:
        """``E y`` for ``y`` on side B ``(L, n_B, R)`` (the product in ``E₀``'s dtype, the result fp64)."""
        e = self.e
        return (self.w * self.keep_a[..., None]) * _bmv(e, (y * self.keep_b[..., None]).to(e.dtype)).to(y.dtype)

    def et_a(self, x: Tensor) -> Tensor:
        """``Eᵀ x`` for ``x`` on side A ``(L, n_A, R)``."""
        e = self.e
        return (self.w * self.keep_b[..., None]) * _bmv(e.transpose(1, 2),
                                                        (x * self.keep_a[..., None]).to(e.dtype)).to(x.dtype)

    def apply(self, x: Tensor) -> Tensor:
        return self.d_a[..., None] * x - self.e_b(self.et_a(x) / self.d_b[..., None])

    def diagonal(self) -> Tensor:
        """``diag(S) = D_A − w² k_A Σ_b E₀[a, b]² k_B / D_B`` (one pass over ``E₀``, in its dtype: a preconditioner)."""
        e = self.e
        sq = _bmv(e * e, (self.keep_b / self.d_b)[..., None].to(e.dtype))[..., 0].to(self.d_a.dtype)
        return self.d_a - (self.w * self.w) * self.keep_a * sq

    def factor(self) -> Tensor:
        """Form ``S`` and factor it (Cholesky, no host sync); returns its status per component (``0``: PD)."""
        e = self.e.to(torch.float64)
        m = torch.bmm(e * (self.keep_b / self.d_b)[:, None, :], e.transpose(1, 2))
        s = torch.diag_embed(self.d_a) - (self.w * self.w) * (self.keep_a[:, :, None] * m * self.keep_a[:, None, :])
        self.chol, info = torch.linalg.cholesky_ex(s)
        return info


def _bmv(e: Tensor, y: Tensor) -> Tensor:
    """``torch.bmm(e, y)`` for a few right-hand sides, ``e (L, n, m)``, ``y (L, m, R)`` with small ``L·R``: in eager
    mode one matrix-vector product per layer and column (on CPU, ``bmm`` with ``R ≤ 2`` columns runs 4–13×
    slower than ``mv`` on the same bytes: 1.0–3.0 ms against 0.2–0.4 ms for ``6 × 256 × 1024`` fp32, measured
    on the 2-core CI box); on other devices (one launch per product there; not measured) and under
    ``torch.compile`` (which Inductor lowers as it likes) the ``bmm`` itself."""
    if torch.compiler.is_compiling() or e.device.type != "cpu" or e.shape[0] * y.shape[-1] > 64:
        return torch.bmm(e, y)
    return torch.stack([torch.stack([torch.mv(e[i], y[i, :, r]) for r in range(y.shape[-1])], dim=-1)
                        for i in range(e.shape[0])])


def _pcg(apply, diag: Tensor, r: Tensor, eps: float) -> Tensor | None:
    """Conjugate gradients for ``S x = r`` (``S`` symmetric positive definite, given by ``apply``), every
    column of ``r`` (``(…, n, R)``: a stack of systems) on its own, preconditioned by ``diag(S)``; ``None``
    if some column's recursively updated residual has not reached ``16 ε ‖r‖`` after :data:`MAX_CG` iterations
    (the true residual ``‖r − S x‖`` then sits at the floor of the products, a few tens of ε) (``ε`` of the
    dtype ``S x`` is computed in: the floor of its products; or a curvature ``pᵀSp ≤ 0`` says ``S`` is not
    numerically positive definite). One host read per iteration (eager only).

    Exactness: the iterates are functions of ``S`` and ``r``, which are the same in two runs related by a
    gauge (they are computed at the canonical point), so the solve keeps the step exactly equivariant; it
    stops at the floor, so the projection is as horizontal as a direct solve's."""
    norm_r = torch.linalg.vector_norm(r, dim=-2)
    x = torch.zeros_like(r)
    res = r.clone()
    if float(norm_r.max()) == 0.0:
        return x
    inv = torch.where(diag > 0, 1.0 / diag, torch.zeros_like(diag))[..., None]
    z = inv * res
    p = z
    rz = (res * z).sum(-2)
    for _ in range(MAX_CG):
        sp = apply(p)
        curv = (p * sp).sum(-2)
        alpha = torch.where(curv > 0, rz / curv, torch.zeros_like(curv))[..., None, :]
        x = x + alpha * p
        res = res - alpha * sp
        rel = torch.linalg.vector_norm(res, dim=-2) / torch.where(norm_r > 0, norm_r, torch.ones_like(norm_r))
        worst, bad = torch.stack([rel.max(), (curv <= 0).logical_and(rz > 0).any().to(rel.dtype)]).tolist()
        if bad:
            return None
        if worst <= 16 * eps:
            return x
        z = inv * res
        rz_new = (res * z).sum(-2)
        p = z + (rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)))[..., None, :] * p
        rz = rz_new
    return None
