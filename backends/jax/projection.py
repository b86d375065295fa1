"""``P_V = X Γ⁻¹ Xᵀ`` at the canonical point, in JAX: the twin of the torch ``projection`` module.

The coupling structure (which families overlap, the bipartite colouring, the Schur side) is
decided once from the binding by the torch-free :class:`~gaugemath.backends._coupling.Coupling`;
this module only evaluates it on arrays.

A coupled component (a row and a column rescale of one matrix) is solved through the Schur
complement on its smaller side, ``S = D_A − E D_B⁻¹ Eᵀ`` (``E (n_A, n_B)`` the off-diagonal Gram
block ``e_a e_b Σ θ̃[a, b]²``), as in torch: by conjugate gradients preconditioned with ``diag(S)``
(:func:`_pcg`, a ``lax.while_loop``: two products with ``E`` per iteration, ``O(n_A n_B)``, instead of
forming ``S`` in ``O(n_A² n_B)``), to the round-off floor of the dtype; where it does not get there in
:data:`MAX_CG` iterations, ``S`` is formed and Cholesky-factored instead (``lax.cond``: only the branch
taken runs). The iterates are functions of invariants at the canonical point, so the solve keeps the
step exactly equivariant, and stopping at the floor it is as horizontal as a direct solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from .._coupling import Coupling

#: conjugate-gradient iterations at most before ``S`` is formed and factored (``cond(S)`` ≈ 1.4 measured on
#: ``gpt_small_cpu``: 3–7 iterations reach the floor)
MAX_CG = 40
#: converged when the residual is at most this many ε of the right-hand side (the floor of the products)
CG_FLOOR = 16


class Projector:
    def __init__(self, families, names, bases=None, balanced: bool = False):
        self.families = families
        self.coupling = Coupling(families, names, bases, balanced)

    def factor(self, theta, masks=None) -> dict:
        """As the torch ``Projector.factor``; ``masks[f]``: units without vertical space (degenerate
        orbits): Gram 1 (heads: the identity) and no coupling, so their solve gives 0. A coupled
        component keeps ``(E, D_A, D_B)``; :meth:`solve` solves it."""
        grams = [fam.gram(theta) for fam in self.families]
        if masks is not None:
            grams = [jnp.where(m.reshape(m.shape[0], *([1] * (g.ndim - 1))),
                               jnp.eye(g.shape[-1], dtype=g.dtype) if g.ndim == 3 else 1.0, g)
                     for g, m in zip(grams, masks)]
        heads = {f: jnp.linalg.eigh(grams[f]) for f, fam in enumerate(self.families) if fam.kind == "head"}
        schur = []
        for comp in self.coupling.components:
            d_a = jnp.concatenate([grams[f] for f in comp.side_a])
            d_b = jnp.concatenate([grams[f] for f in comp.side_b])
            off_a, off_b = comp.offsets(self.families)
            e = jnp.zeros((d_a.shape[0], d_b.shape[0]), d_a.dtype)
            for fa, fb, i, a_rows, w in comp.edge_weights(self.families):
                t = theta[i]
                sq = t * t if a_rows else (t * t).T
                sa, sb = off_a[fa], off_b[fb]
                e = e.at[sa : sa + self.families[fa].units, sb : sb + self.families[fb].units].add(w * sq)
            if masks is not None:
                keep_a = ~jnp.concatenate([masks[f] for f in comp.side_a])
                keep_b = ~jnp.concatenate([masks[f] for f in comp.side_b])
                e = e * keep_a[:, None] * keep_b[None, :]
            schur.append((e, d_a, d_b, off_a, off_b))
        return {"grams": grams, "heads": heads, "schur": schur}

    def solve(self, fact, rhs):
        out = [None] * len(self.families)
        coupled = self.coupling.coupled
        for f, fam in enumerate(self.families):
            if fam.kind == "head":
                lam, q = fact["heads"][f]
                c = jnp.einsum("hia,hijr,hjb->habr", q, rhs[f], q)
                a = c / (lam[:, :, None, None] + lam[:, None, :, None])
                out[f] = jnp.einsum("hai,hijr,hbj->habr", q, a, q)
            elif f not in coupled:
                out[f] = rhs[f] / fact["grams"][f][:, None]
        for comp, (e, d_a, d_b, off_a, off_b) in zip(self.coupling.components, fact["schur"]):
            r_a = jnp.concatenate([rhs[f] for f in comp.side_a])
            r_b = jnp.concatenate([rhs[f] for f in comp.side_b])
            x_a = schur_solve(e, d_a, d_b, r_a - e @ (r_b / d_b[:, None]))
            x_b = (r_b - _et(e, x_a)) / d_b[:, None]
            for f in comp.side_a:
                out[f] = x_a[off_a[f] : off_a[f] + self.families[f].units]
            for f in comp.side_b:
                out[f] = x_b[off_b[f] : off_b[f] + self.families[f].units]
        return out


def schur_solve(e, d_a, d_b, r):
    """``S x = r`` for ``S = diag(d_a) − E diag(1/d_b) Eᵀ`` (``r (n_A, R)``): :func:`_pcg`, or where it does not
    reach the floor, ``S`` formed and Cholesky-factored."""
    def apply(x):
        return d_a[:, None] * x - e @ (_et(e, x) / d_b[:, None])

    diag = d_a - (e * e) @ (1.0 / d_b)
    x, ok = _pcg(apply, diag, r, jnp.finfo(r.dtype).eps)

    def direct(_):
        s = jnp.diag(d_a) - (e / d_b) @ e.T
        return cho_solve(cho_factor(s, lower=True), r)

    return jax.lax.cond(ok, lambda _: x, direct, None)


def _et(e, x):
    """``Eᵀx`` as ``(xᵀE)ᵀ``: XLA:CPU materialises ``E.T`` for ``E.T @ x`` (0.7 ms for ``256 × 1024`` fp32 against
    0.07 ms, measured on the 2-core CI box), not for a product from the left."""
    return (x.T @ e).T


def _pcg(apply, diag, r, eps):
    """Conjugate gradients for ``S x = r`` (symmetric positive definite ``S`` given by ``apply``), each column
    of ``r (n, R)`` on its own, preconditioned by ``diag(S)``: ``(x, ok)``, ``ok`` when every column's recursively
    updated residual reached ``CG_FLOOR·ε‖r‖`` within :data:`MAX_CG` iterations with positive curvature throughout
    (the torch twin's rule, in a ``lax.while_loop``: no host reads; the true residual ``‖r − S x‖`` is then at the
    floor of the products, 10–33 ε on the test matrices)."""
    norm_r = jnp.linalg.norm(r, axis=0)
    scale = jnp.where(norm_r > 0, norm_r, 1.0)
    inv = jnp.where(diag > 0, 1.0 / jnp.where(diag > 0, diag, 1.0), 0.0)[:, None]
    z = inv * r
    start = (jnp.zeros_like(r), r, z, jnp.sum(r * z, axis=0), jnp.asarray(0), jnp.max(norm_r) == 0,
             jnp.asarray(False))

    def cond(c):
        _, _, _, _, it, done, bad = c
        return (~done) & (~bad) & (it < MAX_CG)

    def body(c):
        x, res, p, rz, it, _, _ = c
        sp = apply(p)
        curv = jnp.sum(p * sp, axis=0)
        alpha = jnp.where(curv > 0, rz / jnp.where(curv > 0, curv, 1.0), 0.0)
        x = x + alpha * p
        res = res - alpha * sp
        done = jnp.max(jnp.linalg.norm(res, axis=0) / scale) <= CG_FLOOR * eps
        bad = jnp.any((curv <= 0) & (rz > 0))
        z = inv * res
        rz_new = jnp.sum(res * z, axis=0)
        p = z + (rz_new / jnp.where(rz != 0, rz, 1.0)) * p
        return x, res, p, rz_new, it + 1, done, bad

    x, _, _, _, _, done, bad = jax.lax.while_loop(cond, body, start)
    return x, done & ~bad
