"""The jointly balanced canonical point of the scaling part of a binding (``frames="balanced"``).

The two-sided scale families of a binding (unit rescales, norm-gain rescales: per unit ``k`` a
log-scale ``a_k`` multiplying the slices of exponent ``e = ±1`` by ``e^{e a_k}``) generate an abelian
group ``A ≅ ℝ^N`` (``N`` the number of units). Its canonical point is the minimum-norm point of the
``A``-orbit:

    a*(θ) = argmin_a F(θ, a),    F(θ, a) = Σ_t ‖e^a·θ_t‖² = Σ_j θ_j² exp(2 Σ_k e_kj a_k)

(``j`` runs over the entries of the bound tensors, ``e_kj`` is the exponent with which unit ``k``
scales entry ``j``). Three facts make it a canonical frame (``proofs/transformer_block.md``,
"balanced frame"):

* ``F(e^b·θ, a) = F(θ, a + b)``, so ``a*(e^b·θ) = a*(θ) − b`` and ``h(θ) = e^{a*(θ)}`` satisfies
  ``h(g·θ)·g·θ = h(θ)·θ`` exactly, for every ``g ∈ A``;
* ``∇_a F(θ, 0) = 2 Xᵀθ`` and ``∇²_a F(θ, 0) = 4 Γ`` with ``X_k = e_k θ|_k`` the generators and
  ``Γ = XᵀX`` their Gram matrix: ``F`` is strictly convex wherever the orbit is non-degenerate, so
  the minimiser is unique, and at it every scaling charge ``Q_k = ⟨X_k, θ⟩ = Σ_{e=+1} θ² − Σ_{e=−1} θ²``
  vanishes — the point "where the Noether charges balance";
* ``F`` is unchanged by the binding's other factors when they are canonicalised around it: a row
  rotation (heads, RoPE planes) keeps every column norm, and a class-axis translation is applied
  *first*, so ``F`` sees centred columns, which a column scaling keeps centred.

Unlike an anchor (``‖W_out[:, k]‖ = 1``), the balanced point does not move step size from one side
of a unit to the other: Adam's per-coordinate step in canonical coordinates maps back to about the
same relative step on both sides (measured in ``docs/results.md``).

Solve. A family that shares no matrix with another scale family has, per unit,
``F_k = A e^{2a} + B e^{−2a}`` with ``A = Σ_{e=+1} θ² = (Γ_kk + c_k)/2``,
``B = Σ_{e=−1} θ² = (Γ_kk − c_k)/2`` (``c = Xᵀθ``): ``a* = ¼ log(B/A)`` in closed form. Families that
share a matrix (a row rescale and a column rescale of ``W_fc``: a SwiGLU/ReLU unit and the norm gain
before it) are coupled; after the closed form, Newton's method ``a ← a − ½ Γ⁻¹ Xᵀθ`` (``Γ`` factored
by :class:`~.projection.Projector`'s Schur complement) converges quadratically; once its steps are
below :data:`CHORD` it keeps the last factorisation (chord steps, linear at a rate about that small, at
the price of reductions and a solve instead of a new Schur complement) until the steps reach the
round-off floor, at most :data:`MAX_NEWTON` steps (fp64: 2–3 Newton and 2–3 chord steps).
A unit whose slices are zero on one side has no minimum (its orbit is
degenerate): it keeps ``a = 0`` and is excluded from the vertical space, as with every frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._balance import two_sided
from .._coupling import Coupling
from .batching import Batch
from .orbits import BoundFamily
from .projection import Projector

#: Newton iterations at most on coupled families (quadratic convergence: 3–5 are used in practice)
MAX_NEWTON = 30
#: Newton iterations under ``torch.compile`` (no host read of the step size): 5–6 reach fp64 from the closed form
FIXED_NEWTON = 8
#: Below this step size (log-scale) Newton reuses its last factorisation (chord steps: each costs reductions
#: and a solve, not a new Schur complement); their linear rate is about the change since that factorisation
CHORD = 1e-3
#: Steps at most this many ε: converged (the round-off floor of the charges ``Xᵀθ``)
FLOOR = 64
#: A Newton step is clamped to |Δa| ≤ this (a trust region in log-scale; inactive near the optimum)
MAX_STEP = 2.0

def degenerate_sides(side: dict[int, Tensor]) -> Tensor:
    """Units with no balanced point (:meth:`~.orbits.BoundFamily.side_sums` ``{±1: Σθ²}``): a zero side (the orbit
    is degenerate, ``F`` has no minimum) or a non-finite sum."""
    plus, minus = side[1], side[-1]
    return (plus == 0) | (minus == 0) | ~torch.isfinite(plus + minus)


class JointBalance:
    """``h(θ) = e^{a*(θ)}`` for the two-sided scale families among ``families`` (per-family list;
    ``names``/``bases`` as for :class:`~.projection.Projector`)."""

    def __init__(self, families: list[BoundFamily], names: list[str], bases: list[int] | None = None):
        self.members = [f for f, fam in enumerate(families) if two_sided(fam)]
        coupled = Coupling([families[f] for f in self.members], names, bases).coupled if self.members else set()
        self.coupled = sorted(self.members[i] for i in coupled)  # Newton's unknowns; the rest: closed form
        self.projector = Projector([families[f] for f in self.coupled], names, bases) if self.coupled else None

    def __bool__(self) -> bool:
        return bool(self.members)

    def solve(self, batches: list[Batch], theta: list[Tensor], sync: bool = True,
              warm: dict[int, Tensor] | None = None) -> dict:
        """Balance ``θ`` in place; returns ``{batch position: (h, mask)}`` for the batches of two-sided
        families (``h = e^{a*}`` per unit, the identity on degenerate units ``mask``) and, under the key
        ``"info"``, ``0`` if Newton converged (a tensor: checked with the update, no sync here).
        ``batches``' ``members`` index the ``families`` given at construction. ``sync=False``
        (under ``torch.compile``): a fixed number of Newton steps, no host read of the step size.

        ``warm`` (eager only; the caller's dict, updated in place): per batch of coupled families, the
        log-scales of the previous solve, Newton's starting point instead of the per-unit closed form.
        A DDC update is horizontal, so it changes the charges ``Xᵀθ̃`` only to second order: from the
        last step's frame Newton starts next to the minimiser and needs one factorisation instead of three.
        It is only a starting point: Newton still runs to the round-off floor, so the frame is the
        minimiser of ``F`` at ``θ`` (to round-off), whatever ``warm`` holds, and equivariance is
        untouched (if ``θ_B = e^b·θ_A`` then the minimisers satisfy ``a*_B = a*_A − b`` either way)."""
        mine = {i: b for i, b in enumerate(batches) if b.members[0] in set(self.members)}
        logs: dict[int, Tensor] = {}
        masks: dict[int, Tensor] = {}
        newton = {i: b for i, b in mine.items() if any(f in self.coupled for f in b.members)}
        for i, b in mine.items():  # closed form per unit: exact for uncoupled families
            side = b.family.side_sums(theta)
            plus, minus = side[1], side[-1]
            masks[i] = degenerate_sides(side)
            a = torch.where(masks[i], torch.zeros_like(plus), 0.25 * torch.log(minus / plus))
            if sync and warm is not None and i in newton and i in warm:  # the coupled units start from warm
                start = warm[i]
                coupled = b.join([torch.full((b.units,), f in self.coupled, dtype=torch.bool, device=a.device)
                                  for f in b.members])
                a = torch.where(coupled & ~masks[i] & torch.isfinite(start), start, a)
            b.family.act(torch.exp(a), theta)
            logs[i] = a
        info = theta[0].new_zeros((), dtype=torch.int32)
        if newton:
            info = self._newton(newton, theta, logs, masks, sync)
            if sync and warm is not None:
                warm.update({i: logs[i] for i in newton})
        out: dict = {i: (torch.exp(logs[i]), masks[i]) for i in mine}
        out["info"] = info
        return out

    def _newton(self, newton: dict[int, Batch], theta: list[Tensor], logs: dict, masks: dict,
                sync: bool) -> Tensor:
        """Newton steps ``a ← a − ½ Γ⁻¹ Xᵀθ`` on the coupled families, ``θ`` rescaled after each."""
        proj = self.projector
        local = {f: k for k, f in enumerate(self.coupled)}
        eps = torch.finfo(theta[0].dtype).eps
        converged = theta[0].new_zeros((), dtype=torch.bool)
        info = theta[0].new_zeros((), dtype=torch.int32)
        final, fact, prev = False, None, None
        for _ in range(MAX_NEWTON if sync else FIXED_NEWTON):
            grams: list[Tensor | None] = [None] * len(self.coupled)
            rhs: list[Tensor | None] = [None] * len(self.coupled)
            fmask: list[Tensor | None] = [None] * len(self.coupled)
            for i, b in newton.items():
                gram, c = b.family.gram_and_self_coords(theta)
                gram = torch.where(masks[i], torch.ones_like(gram), gram)
                c = torch.where(masks[i], torch.zeros_like(c), c)
                for f, g_part, c_part, m_part in zip(b.members, b.split(gram), b.split(c), b.split(masks[i])):
                    if f in local:  # (a batch may hold an uncoupled layer too: balanced already, step 0)
                        grams[local[f]], rhs[local[f]], fmask[local[f]] = g_part, c_part[:, None], m_part
            if fact is None or prev is None or prev > CHORD:  # else a chord step: the last factorisation
                fact = proj.factor(theta, grams, fmask)
            x = proj.solve(fact, rhs)
            info = info + sum(fact["info"])  # (a factorisation the solve fell back to included)
            biggest = None
            for i, b in newton.items():
                parts = [x[local[f]][:, 0] if f in local else theta[0].new_zeros(b.units) for f in b.members]
                step = (-0.5 * b.join(parts)).clamp(-MAX_STEP, MAX_STEP)
                step = torch.where(masks[i], torch.zeros_like(step), step)
                b.family.act(torch.exp(step), theta)
                logs[i] = logs[i] + step
                size = step.abs().max()
                biggest = size if biggest is None else torch.maximum(biggest, size)
            if not sync:
                continue
            size = float(biggest)
            if final or size <= FLOOR * eps:
                converged = torch.ones((), dtype=torch.bool, device=theta[0].device)
                break
            # Newton (quadratic): one more step after √ε reaches ~ε; chord steps (linear, rate ~ the change
            # since the factorisation, ≤ CHORD): stop at the round-off floor, where steps stop shrinking
            final = size <= eps ** 0.5 and (prev is None or prev > CHORD or size > prev * 1e-2)
            prev = size
        if sync and not bool(converged):
            info = info + 1
        return info


def canonicalise(batches: list[Batch], theta: list[Tensor], grad: list[Tensor] | None = None,
                 balance: JointBalance | None = None, sync: bool = True,
                 warm: dict[int, Tensor] | None = None,
                 pivots: dict[int, Tensor] | None = None) -> tuple[list, list[Tensor], list[Tensor]]:
    """Step 1 of DDCAdam, in place: ``θ ← h(θ)·θ`` and ``g ← D(h)^{-T} g`` batch by batch, in the
    batches' order (``balance``: the two-sided scale families jointly, :class:`JointBalance`; every
    other family by its own generated frame). A unit whose frame is undefined
    (:meth:`~.orbits.BoundFamily.degenerate`) takes the identity and no vertical space.

    Returns per batch the frame ``h`` and the degenerate-unit mask, and the convergence flags of the
    joint solve (tensors, ``0``: converged; checked with the update). ``warm``: Newton's starting
    points, see :meth:`JointBalance.solve`. ``pivots``: per plane batch the anchor columns held from last step
    (``-1``: none), replaced in place of the dict by this step's (:meth:`~.orbits.BoundFamily.pivot`)."""
    frames, masks, infos = [], [], []
    joint: dict = {}
    members = set(balance.members) if balance else set()
    for i, b in enumerate(batches):
        fam = b.family
        if b.members[0] in members:
            if not joint:
                joint = balance.solve(batches, theta, sync=sync, warm=warm)
                infos.append(joint["info"])
            h, mask = joint[i]
            if grad is not None:
                fam.act(h, grad, covector=True)
        else:
            pivot = None
            if pivots is not None and i in pivots:
                pivot = pivots[i] = fam.pivot(theta, pivots[i])
            h = fam.frame(theta, pivot=pivot)
            mask = fam.degenerate(theta, h, pivot=pivot)
            h = fam.identity_where(mask, h)
            if grad is not None:
                fam.act_pair(h, theta, grad)  # (one fused launch on the kernel path)
            else:
                fam.act(h, theta)
        frames.append(h)
        masks.append(mask)
    return frames, masks, infos
