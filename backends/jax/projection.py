"""``P_V = X Γ⁻¹ Xᵀ`` at the canonical point, in JAX: the twin of the torch ``projection`` module.

The coupling structure (which families overlap, the bipartite colouring, the Schur side) is
decided once from the binding by the torch-free :class:`~gaugemath.backends._coupling.Coupling`;
this module only evaluates it on arrays.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import cho_factor, cho_solve

from .._coupling import Coupling


class Projector:
    def __init__(self, families, names, bases=None, balanced: bool = False):
        self.families = families
        self.coupling = Coupling(families, names, bases, balanced)

    def factor(self, theta, masks=None) -> dict:
        """As the torch ``Projector.factor``; ``masks[f]``: units without vertical space (degenerate
        orbits): Gram 1 (heads: the identity) and no coupling, so their solve gives 0."""
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
            s = jnp.diag(d_a) - (e / d_b) @ e.T
            schur.append((e, d_b, cho_factor(s, lower=True), off_a, off_b))
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
        for comp, (e, d_b, chol, off_a, off_b) in zip(self.coupling.components, fact["schur"]):
            r_a = jnp.concatenate([rhs[f] for f in comp.side_a])
            r_b = jnp.concatenate([rhs[f] for f in comp.side_b])
            x_a = cho_solve(chol, r_a - e @ (r_b / d_b[:, None]))
            x_b = (r_b - e.T @ x_a) / d_b[:, None]
            for f in comp.side_a:
                out[f] = x_a[off_a[f] : off_a[f] + self.families[f].units]
            for f in comp.side_b:
                out[f] = x_b[off_b[f] : off_b[f] + self.families[f].units]
        return out
