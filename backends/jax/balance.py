"""The jointly balanced canonical point in JAX: the functional twin of the torch ``balance`` module.

The same construction (see :mod:`gaugemath.backends.torch.balance` for the math): the two-sided
scale families in closed form per unit (``a* = ¼ log(B/A)``), then Newton's method
``a ← a − ½ Γ⁻¹ Xᵀθ`` on the families that share a matrix, in a ``lax.while_loop`` that stops at the
round-off floor (a step of at most ``FLOOR·ε``) or one step after the step falls below ``√ε`` (at most
:data:`MAX_NEWTON`), so it traces under ``jax.jit``. As in torch, Newton starts from the previous step's
log-scales where the optimizer state has them (``warm``): a horizontal update moves the charges only to
second order, so one or two steps reach the floor; it still runs to the floor, so the frame is the minimiser
whatever the start, and equivariance is untouched (``a*(e^b·θ) = a*(θ) − b`` for both starts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._balance import two_sided
from .._coupling import Coupling
from .layout import sync
from .projection import Projector

MAX_NEWTON = 30
MAX_STEP = 2.0
#: a Newton step of at most this many ε: converged (the round-off floor of the charges ``Xᵀθ``)
FLOOR = 64


class JointBalance:
    """``h(θ) = e^{a*(θ)}`` for the two-sided scale families among ``families``."""

    def __init__(self, families, names, bases=None):
        self.members = [f for f, fam in enumerate(families) if two_sided(fam)]
        self.families = [families[f] for f in self.members]
        coupled = Coupling(self.families, names, bases).coupled if self.members else set()
        self.coupled = sorted(coupled)  # indices into self.families: Newton's unknowns (the rest: closed form)
        self.projector = Projector([self.families[k] for k in self.coupled], names, bases) if self.coupled else None

    def solve(self, theta: list, layout, warm: tuple | None = None) -> tuple[list, dict, jax.Array, tuple]:
        """``(θ balanced, {family index: (h, mask)}, converged, logs)`` (indices into the ``families`` given
        at construction; ``converged`` a boolean array; ``logs``: per coupled family, in :attr:`coupled` order,
        the log-scales found, the next step's ``warm``). ``warm``: those of the previous step (NaN: none, the
        closed form starts there)."""
        logs, masks = [], []
        start = dict(zip(self.coupled, warm)) if warm else {}
        for k, fam in enumerate(self.families):  # closed form per unit: exact for uncoupled families
            side = fam.side_sums(theta)
            plus, minus = side[1], side[-1]
            mask = (plus == 0) | (minus == 0) | ~jnp.isfinite(plus + minus)
            a = jnp.where(mask, 0.0, 0.25 * jnp.log(jnp.where(mask, 1.0, minus / jnp.where(mask, 1.0, plus))))
            if k in start:  # a coupled family: Newton starts from last step's log-scales where there are some
                a = jnp.where(mask | ~jnp.isfinite(start[k]), a, start[k].astype(a.dtype))
            theta = sync(layout, theta, fam.act(jnp.exp(a), theta))
            logs.append(a)
            masks.append(mask)
        converged = jnp.asarray(True)
        if self.coupled:
            theta, logs, converged = self._newton(theta, logs, masks, layout)
        out = {f: (jnp.exp(a), m) for f, a, m in zip(self.members, logs, masks)}
        return theta, out, converged, tuple(logs[k] for k in self.coupled)

    def _newton(self, theta, logs, masks, layout):
        proj, coupled = self.projector, self.coupled
        eps = jnp.finfo(theta[0].dtype).eps

        def body(carry):
            theta, logs, it, final, done = carry
            fact = proj.factor(theta, [masks[k] for k in coupled])
            x = proj.solve(fact, [jnp.where(masks[k], 0.0, self.families[k].coords(theta, theta))[:, None]
                                  for k in coupled])
            logs = list(logs)
            biggest = jnp.asarray(0.0, theta[0].dtype)
            for j, k in enumerate(coupled):
                step = jnp.clip(-0.5 * x[j][:, 0], -MAX_STEP, MAX_STEP)
                step = jnp.where(masks[k], 0.0, step)
                theta = sync(layout, theta, self.families[k].act(jnp.exp(step), theta))
                logs[k] = logs[k] + step
                biggest = jnp.maximum(biggest, jnp.max(jnp.abs(step)))
            return theta, logs, it + 1, biggest <= jnp.sqrt(eps), final | (biggest <= FLOOR * eps)

        def cond(carry):
            return (~carry[4]) & (carry[2] < MAX_NEWTON)

        start = (theta, logs, jnp.asarray(0), jnp.asarray(False), jnp.asarray(False))
        theta, logs, _, _, done = jax.lax.while_loop(cond, body, start)
        return theta, logs, done


def canonicalise(fams: list, theta: list, layout, balance: JointBalance | None = None, grad: list | None = None,
                 pivots: dict | None = None, warm: dict | None = None):
    """Step 1 of ``ddc_adam``: ``θ ← h(θ)·θ`` (and ``g ← D(h)^{-T} g``) family by family in ``fams``' order, the
    two-sided scales jointly (``balance``), degenerate units given the identity. Returns
    ``(θ, g, frames, masks, converged)``. ``pivots``: per plane family (index into ``fams``) the anchor columns
    held from last step (``-1``: none), replaced in the dict by this step's (``BoundFamily.pivot``). ``warm``:
    ``{"logs": ...}``, the joint balance's start (:meth:`JointBalance.solve`), replaced by this step's."""
    frames, masks = [], []
    joint, converged = None, jnp.asarray(True)
    for f, fam in enumerate(fams):
        if balance is not None and f in balance.members:
            if joint is None:
                theta, joint, converged, logs = balance.solve(theta, layout, warm["logs"] if warm else None)
                if warm is not None:
                    warm["logs"] = logs
            h, mask = joint[f]
        else:
            pivot = None
            if pivots is not None and f in pivots:
                pivot = pivots[f] = fam.pivot(theta, pivots[f])
            h = fam.frame(theta, pivot=pivot)
            mask = fam.degenerate(theta, h)
            h = fam.identity_where(mask, h)
            theta = sync(layout, theta, fam.act(h, theta))
        if grad is not None:
            grad = sync(layout, grad, fam.act(h, grad, covector=True))
        frames.append(h)
        masks.append(mask)
    return theta, grad, frames, masks, converged
