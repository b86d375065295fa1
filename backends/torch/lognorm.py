"""``DDCAdamLogNorm``: the second DDCAdam construction (``frame="lognorm"``, ``../shared/spec/ddc.md`` §3).

It follows the Lean model of the companion theory paper (``DeadDirections/DeadDirections``,
``DeadDirections/DdcAdamEquivariance.lean``, prop. ``ddcadam_equivariance``). There is no canonical
frame. Every Adam input is already gauge-invariant, so the moments never need transforming.

**Blocks.** A gauge-bound scale family (one positive scalar ``c_k`` per unit ``k``) splits into one
block per unit and side. ``B₊(k)`` is slice ``k`` of every role with exponent ``+1``, ``B₋(k)`` slice
``k`` of every role with exponent ``−1``, and the slices of one side are concatenated into one vector.
For a ReLU unit, ``B₊ = W_in[k, :] ⊕ b_in[k]`` of length ``d_in + 1`` and ``B₋ = W_out[:, k]`` of
length ``d_out``. For a norm channel, ``B₊ = γ_i ⊕ β_i`` and ``B₋`` is column ``i`` of every consumer.
The gauge acts on a block by a scalar, ``B₊ → c B₊`` and ``B₋ → B₋ / c``, and on its gradient by the
inverse, ``g₊ → g₊ / c`` and ``g₋ → c g₋``.

**One step** with learning rate ``η`` and decay ``λ``, for each block ``W`` with gradient ``g``
(shapes are per unit, ``(units,)``, or as the block):

1. decay as a uniform shrink, ``W ← (1 − ηλ) W`` (``applyBlock`` on ``δ • W`` in the Lean model);
2. ``ρ = ‖W‖``, ``ĝ = ⟨g, W⟩`` (``hatg``), ``g_tan = g − (ĝ/ρ²) W`` (``gtan``);
3. per-coordinate Adam on ``ρ · g_tan`` (``tangIn``: invariant, because ``ρ`` scales by ``c`` and
   ``g_tan`` by ``1/c``), giving ``u``. Then ``u`` is re-projected, ``u ← u − (⟨u, W⟩/ρ²) W``
   (``reproj``);
4. per unit, the radial scalar ``g_U = (ĝ₊ + ĝ₋)/√2`` and the gauge-mode (vertical) scalar
   ``g_V = (ĝ₊ − ĝ₋)/√2`` (``gU``, ``gV``), each with its own state. ``g_U`` takes scalar Adam and
   gives ``Û``. What ``g_V`` gives depends on ``vertical``. ``"freeze"`` (the default) gives
   ``V̂ = 0``. ``"sgd"`` gives ``V̂ = g_V``. ``"adam"`` takes scalar Adam, with the denominator floor
   ``vertical_eps``, and gives ``V̂``. A ``g_V`` below its round-off floor, ``max((n + 8)ε, rtol) ·
   (|g₊|ᵀ|W₊| + |g₋|ᵀ|W₋|)/√2``, is set to exactly zero before any of this. For a gauge-invariant
   loss it *is* zero, and normalising its round-off would make unit steps along the orbit (the
   ddc.md §3 pitfall);
5. the log-norm steps are ``Δlog ρ₊ = −η (Û + V̂)/√2`` and ``Δlog ρ₋ = −η (Û − V̂)/√2``, the step
   ``−η(Û e_U + V̂ e_V)`` in the orthonormal basis ``e_U = (1, 1)/√2``, ``e_V = (1, −1)/√2`` of
   log-norm space;
6. ``W ← exp(Δlog ρ) · W − η ρ u`` (``applyBlock``).

Each input to the state maps (``ĝ``, ``ρ g_tan``, ``g_U``, ``g_V``, the floors) is invariant. The
re-projection and ``exp(r) W − η ρ u`` commute with ``W → c W`` (``reproj_gauge``, ``applyBlock_gauge``),
so ``θ_B = g·θ_A`` with ``g_B = D(g)^{-T} g_A`` gives ``θ_B' = g·θ_A'`` (``ddcadamMult_fst_equivariant``,
``ddcadamMult_snd_equivariant``).

**Which gauges it covers.** Every other gauge raises a :class:`~gaugemath.GaugeError` at construction,
naming the gauge, the family and the parameter. None is dropped silently.

- ``relu_rescale.*`` and ``swiglu_rescale.*``: the rescale pair. The ``balance``/``anchor`` suffix names
  a canonical frame, and this construction uses none, so the suffix is ignored. SwiGLU's group also has
  ``c < 0``, which is covered as well: ``ρ g_tan`` then flips sign, and Adam is odd in its input.
- ``norm_scale.layernorm`` and ``norm_scale.rmsnorm``: the per-channel gain, ``ddcadamLNScale_*``, pair by
  pair over the channels. With RMSNorm ``B₊ = γ_i`` is a scalar block. It has no tangential part, so it
  moves only radially and never changes sign.
- ``norm_scale.producer``: a one-sided family. The whole producer ``W_p ⊕ b_p`` is one block, and its
  log-norm is pure gauge mode: there is no radial scalar, ``g_V = ĝ``, and by default it is frozen.
- Chained rescales (``ddcadamChain_equivariant``): any number of the families above, as long as their
  blocks are disjoint. The Lean statement is stronger than the gauge: the update commutes with scaling
  each block by its own positive number, and the test suite checks that too. A coordinate scaled by two
  families is refused. Examples are ``W_fc`` under both a norm gain (columns) and the unit rescale
  (rows), and the middle matrix of a chain of per-unit rescales. Its blocks would be single entries:
  the model allows that, but then no tangential Adam channel is left and entries can never change sign.
  The canonical DDCAdam handles such overlaps with its composed frames.
- ``ce_shift`` (``W ← W + 1vᵀ``, ``b ← b + c1``): the translation gauge, ``ddcadamTransl_equivariant``.
  Every block statistic reads ``P W`` and ``P g``, where ``P`` centres each shift slice (a column of
  ``W``, all of ``b``). ``u`` is re-projected by ``P``, and the mean along the slice is never changed
  by the step. The Lean model states the shift at ``λ = 0``. Here the decay shrinks only ``P W``, which
  the shift does not move, so the step still reads ``W`` only through shift-invariant quantities; the
  gauge direction, the class mean, is the weight-decay-free part. A shift slice may lie inside one
  block (a head column under ``ln_f``'s gain), because ``P`` commutes with scaling that block. One
  that straddles blocks is refused.
- ``head_rotation.*``: **refused**. The Lean model has no rotation gauge. Leave it unbound, or use the
  canonical DDCAdam.

Zero blocks: ``exp(r)·0 − η·0·u = 0``, so a block that is exactly zero can never move. One that is zero
at the first step is refused (a zero-initialised output projection or head). One that reaches zero
later, only by underflow, stays there.

Coordinates of bound tensors that no scale family touches get plain Adam on ``P g``, decay on ``P W``,
and ``u ← P u``. With no shift either, that is AdamW's formula. Free (unbound) tensors take the
inherited ``torch.optim.AdamW`` update, so with no gauges this *is* AdamW.

A step is all or nothing. Every new value of the bound tensors (parameters, moments, scalar
states, step counts) is computed out of place, checked (finite, and representable in the parameter
dtype), and only then written. :meth:`DDCAdam.step` steps the free tensors after this, and its journal
restores an earlier param group's values if a later one fails.

The arguments are :class:`~gaugemath.backends.torch.DDCAdam`'s, with the same meaning. There are no
Triton kernels for this construction: ``kernels="triton"`` is refused, and ``"auto"`` runs the
reference path. ``canonical_dtype`` is the dtype of the block computation (fp64 by default).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from gaugemath.errors import GaugeError

from .._spec import entry_shape
from .binding import entries, stored, work_copies
from .optim import DDCAdam, _SkipStep, extremes, scalar, step_count

COVERED = ("relu_rescale", "swiglu_rescale", "norm_scale", "ce_shift")
SQRT2 = math.sqrt(2.0)


def _sum(t: Tensor, axis: str) -> Tensor:
    """Per-unit sum over the slices of ``t`` along ``axis``: ``(units,)``."""
    if axis == "rows":
        return t.reshape(t.shape[0], -1).sum(1)
    if axis == "cols":
        return t.sum(0)
    return t.sum().reshape(1)


def _amin(t: Tensor, axis: str) -> Tensor:
    if axis == "rows":
        return t.reshape(t.shape[0], -1).amin(1)
    if axis == "cols":
        return t.amin(0)
    return t.amin().reshape(1)


def _bcast(v: Tensor, t: Tensor, axis: str) -> Tensor:
    """Per-unit ``v`` shaped to broadcast over the slices of ``t``."""
    if axis == "rows":
        return v.reshape(-1, *([1] * (t.dim() - 1)))
    if axis == "cols":
        return v.reshape(1, -1)
    return v.reshape(())


def _length(t: Tensor, axis: str) -> int:
    if axis == "rows":
        return t.numel() // max(t.shape[0], 1)
    if axis == "cols":
        return t.shape[0]
    return t.numel()


class _Scale:
    """One scale family: its members per side (``+1``/``−1``: lists of ``(axis, entry)``)."""

    def __init__(self, index: int, fam, sides: dict[int, list[tuple[str, int]]]):
        self.index, self.fam, self.sides = index, fam, sides
        self.two_sided = len(sides) == 2


class _Shift:
    """One translation family: members ``(axis, entry)``."""

    def __init__(self, index: int, fam, members: list[tuple[str, int]]):
        self.index, self.fam, self.members = index, fam, members


def _structure(plan: dict) -> tuple[list[_Scale], list[_Shift]]:
    """Check that the plan's families are covered by the Lean model, and return them by kind.

    Refuses rotations, a coordinate scaled by two families, two shifts on one coordinate, and a
    shift slice that straddles blocks, each with a GaugeError naming the gauge and the parameter."""
    fams, lay, names = plan["families"], plan["layout"], plan["names"]
    shapes = [tuple(p.shape) for p in plan["bound"]]
    n = len(shapes)
    scales, shifts = [], []
    for f, fam in enumerate(fams):
        gauge = fam.family.gauge
        if fam.kind not in ("scale", "translate") or gauge not in COVERED:
            tensors = ", ".join(dict.fromkeys(names[i] for _, i in fam.members()))
            raise GaugeError(gauge, fam.name, f"frame='lognorm' covers the rescale, norm-gain and shift gauges of "
                             f"the Lean model (DdcAdamEquivariance.lean), not {fam.family.key} (on {tensors}); "
                             "leave it unbound or use the canonical DDCAdam")
        if fam.kind == "scale":
            sides: dict[int, list[tuple[str, int]]] = {}
            for s, i in fam.members():
                if s.exponent not in (1, -1):
                    raise GaugeError(gauge, fam.name, f"exponent {s.exponent} on {names[i]}: frame='lognorm' "
                                     "takes blocks scaled by c or 1/c")
                sides.setdefault(s.exponent, []).append((s.axis, i))
            scales.append(_Scale(f, fam, sides))
        else:
            shifts.append(_Shift(f, fam, [(s.axis, i) for s, i in fam.members()]))
    # which family (and which block) owns each coordinate: maps in the work layout, views for row selections
    work = [torch.full(entry_shape(lay, shapes, k), -1, dtype=torch.long) for k in range(n)]
    owner = entries(lay, work)  # the scale family of each coordinate
    block = entries(lay, [w.clone() for w in work])  # its block (2·unit + side, over all scale families)
    owner_s = entries(lay, [w.clone() for w in work])  # its translation family
    offset = 0
    for sc in scales:
        for side, members in sc.sides.items():
            for axis, i in members:
                taken = owner[i][owner[i] >= 0]
                if taken.numel():
                    other = fams[int(taken[0])]
                    raise GaugeError(sc.fam.family.gauge, f"{sc.fam.name} / {other.name}",
                                     f"{names[i]} is scaled by both {other.family.key} and {sc.fam.family.key}: "
                                     "frame='lognorm' needs each coordinate in one block scaled by one positive "
                                     "number (the Lean model); bind one of them, or use the canonical DDCAdam, "
                                     "whose composed frames take such overlaps")
                owner[i].fill_(sc.index)
                units = torch.arange(sc.fam.units, dtype=torch.long)
                ids = offset + 2 * units + (0 if side > 0 else 1)
                block[i].copy_(torch.broadcast_to(_bcast(ids, block[i], axis), block[i].shape))
        offset += 2 * sc.fam.units
    for sh in shifts:
        for axis, i in sh.members:
            taken = owner_s[i][owner_s[i] >= 0]
            if taken.numel():
                other = fams[int(taken[0])]
                raise GaugeError(sh.fam.family.gauge, f"{sh.fam.name} / {other.name}",
                                 f"{names[i]} is shifted by two translation families; frame='lognorm' takes one")
            owner_s[i].fill_(sh.index)
            b = block[i]
            lo, hi = _amin(b, axis), -_amin(-b, axis)
            if bool((lo != hi).any()):
                k = int(torch.nonzero(lo != hi)[0, 0])
                raise GaugeError(sh.fam.family.gauge, sh.fam.name,
                                 f"slice {k} of {names[i]} straddles blocks of the rescale families: the shift's "
                                 "centring would not commute with their scaling under frame='lognorm'")
    return scales, shifts


class DDCAdamLogNorm(DDCAdam):
    """DDCAdam, lognorm construction: per-block log-norm and tangential Adam (module docstring).

    Takes :class:`~gaugemath.backends.torch.DDCAdam`'s arguments (to be exposed as
    ``DDCAdam(..., frame="lognorm")``). Raises a :class:`~gaugemath.GaugeError` at construction for a
    bound gauge outside the Lean model: rotations, and overlapping rescales.
    """

    LOGNORM = True  # DDCAdam(frame='lognorm') constructs this class

    def __init__(self, params, binding=None, lr: float | Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, vertical: str = "freeze",
                 vertical_eps: float | None = None, vertical_rtol: float | None = None, nonfinite: str = "raise",
                 canonical_dtype: torch.dtype | None = None, kernels: str | None = None, frame: str = "lognorm",
                 **kwargs):
        if frame != "lognorm":
            raise ValueError(f"frame={frame!r}: DDCAdamLogNorm is frame='lognorm'")
        if kernels == "triton":
            raise ValueError("kernels='triton': frame='lognorm' has no Triton kernels; use 'auto' or 'reference'")
        with warnings.catch_warnings(record=True) as caught:  # re-issued at the caller's line, not this one
            warnings.simplefilter("always")
            super().__init__(params, binding, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             vertical=vertical, vertical_eps=vertical_eps, vertical_rtol=vertical_rtol,
                             nonfinite=nonfinite, canonical_dtype=canonical_dtype, kernels="reference",
                             frame="lognorm", **kwargs)
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=2)

    # ------------------------------------------------------------------ structure and state
    def _plan(self) -> list[dict]:
        plans = super()._plan()
        for plan in plans:
            plan["lognorm"] = _structure(plan) if plan["families"] else ([], [])
        return plans

    def _init_state(self, p: Tensor, work: torch.dtype, bound: bool) -> None:
        """DDCAdam's state, and on the first bound tensor of a plan the radial scalar moments
        ``lognorm.radial.{f}.exp_avg`` / ``exp_avg_sq`` ``(units,)`` of each two-sided scale family."""
        super()._init_state(p, work, bound)
        if not bound:
            return
        for plan in self._plans:
            if plan["bound"] and plan["bound"][0] is p:
                st = self.state[p]
                for sc in plan["lognorm"][0]:
                    if sc.two_sided:
                        for moment in ("exp_avg", "exp_avg_sq"):
                            st.setdefault(f"lognorm.radial.{sc.index}.{moment}",
                                          torch.zeros(sc.fam.units, dtype=work, device=p.device))

    # ------------------------------------------------------------------ step
    def _ddc(self, group: dict, plan: dict, slots: list[tuple]) -> Callable[[], None]:
        """One lognorm step on the ``(param, grad, state)`` slots of the bound parameters; writes
        parameters and state only at the end, after the update is checked."""
        lr = float(scalar(group["lr"]))
        (b1, b2), eps, wd0 = group["betas"], group["eps"], group["weight_decay"]
        vertical, veps = group["vertical"], group["vertical_eps"]
        params = [p for p, _, _ in slots]
        states = [st for _, _, st in slots]
        lead = states[0]
        n = len(params)
        lay = plan["layout"]
        names = plan["names"]
        scales, shifts = plan["lognorm"]
        pdtype = params[0].dtype
        sdtype = torch.float32 if pdtype == torch.bfloat16 else pdtype
        work = self.canonical_dtype or torch.float64
        rtol = group["vertical_rtol"]
        rtol = torch.finfo(pdtype).eps ** 0.5 if rtol is None else rtol
        weps = torch.finfo(work).eps
        t = step_count(lead) + 1
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        decays = plan["decays"] or (wd0,) * n

        theta = work_copies(lay, [p.detach() for p in params], work)
        grad = work_copies(lay, [g for _, g, _ in slots], work)
        W = [x.clone() for x in theta]  # P θ: centred along the shift slices
        G = [x.clone() for x in grad]  # P g
        mean = [torch.zeros_like(x) for x in theta]  # (I − P) θ, kept (plus the vertical shift step)
        eW, eG, eM, egrad = entries(lay, W), entries(lay, G), entries(lay, mean), entries(lay, grad)

        # the shift: centre θ and g along each slice (one common mean per unit over the family's members)
        shift_v = []
        for sh in shifts:
            length = sum(_length(eW[i], a) for a, i in sh.members)
            mw = sum(_sum(eW[i], a) for a, i in sh.members) / length
            cg = sum(_sum(egrad[i], a) for a, i in sh.members)
            ag = sum(_sum(egrad[i].abs(), a) for a, i in sh.members)
            for a, i in sh.members:
                eW[i].sub_(_bcast(mw, eW[i], a))
                eM[i].add_(_bcast(mw, eM[i], a))
                eG[i].sub_(_bcast(cg / length, eG[i], a))
            # vertical coordinate on the normalised generator X/‖X‖ = 1/√n; round-off is no signal
            c = cg / math.sqrt(length)
            floor = max((length + 8) * weps, rtol) * ag / math.sqrt(length)
            shift_v.append((sh, torch.where(c.abs() <= floor, torch.zeros_like(c), c), length))

        # 1. decay: a uniform shrink of P θ (per tensor: its param group's λ)
        Wd = [w * (1.0 - lr * lam) for w, lam in zip(W, decays)]
        eWd = entries(lay, Wd)

        # 2. block statistics per unit and side
        stats = []
        first = t == 1
        for sc in scales:
            per = {}
            for side, members in sc.sides.items():
                rho2 = sum(_sum(eWd[i] * eWd[i], a) for a, i in members)
                ghat = sum(_sum(eG[i] * eWd[i], a) for a, i in members)
                gabs = sum(_sum((eG[i] * eWd[i]).abs(), a) for a, i in members)
                length = sum(_length(eWd[i], a) for a, i in members)
                if first and bool((rho2 == 0).any()):
                    k = int(torch.nonzero(rho2 == 0)[0, 0])
                    where = ", ".join(names[i] for _, i in members)
                    raise GaugeError(sc.fam.family.gauge, sc.fam.name,
                                     f"unit {k} is exactly zero on {where}: the log-norm update exp(r)·W − ηρu "
                                     "can never move a zero block; initialise it nonzero or use the canonical DDCAdam")
                inv = torch.where(rho2 > 0, 1.0 / torch.where(rho2 > 0, rho2, 1.0), 0.0)
                per[side] = (rho2.sqrt(), ghat, gabs, length, inv)
            stats.append(per)

        # 3. per-coordinate Adam on the invariant input ρ·g_tan (elsewhere: on P g)
        inp = [x.clone() for x in G]
        einp = entries(lay, inp)
        for sc, per in zip(scales, stats):
            for side, members in sc.sides.items():
                rho, ghat, _, _, inv = per[side]
                for a, i in members:
                    einp[i].copy_(_bcast(rho, eG[i], a) * (eG[i] - _bcast(ghat * inv, eG[i], a) * eWd[i]))
        m_new, v_new, U = [], [], []
        for st, x in zip(states, inp):
            xs = x.to(sdtype)
            m = torch.lerp(st["exp_avg"], xs, 1 - b1)
            v = st["exp_avg_sq"] * b2 + (1 - b2) * xs * xs
            m_new.append(m)
            v_new.append(v)
            U.append(((m / bc1) / (v.sqrt() / bc2**0.5 + eps)).to(work))
        eU = entries(lay, U)
        for sh in shifts:  # u ← P u
            length = sum(_length(eU[i], a) for a, i in sh.members)
            mu = sum(_sum(eU[i], a) for a, i in sh.members) / length
            for a, i in sh.members:
                eU[i].sub_(_bcast(mu, eU[i], a))
        for sc, per in zip(scales, stats):  # u ← u − (⟨u, W⟩/ρ²) W, per block
            for side, members in sc.sides.items():
                inv = per[side][4]
                du = sum(_sum(eU[i] * eWd[i], a) for a, i in members)
                for a, i in members:
                    eU[i].sub_(_bcast(du * inv, eU[i], a) * eWd[i])

        # 4–5. radial and vertical scalars, log-norm steps
        scalar_state: list[tuple[Tensor, Tensor]] = []
        logsteps = []
        for sc, per in zip(scales, stats):
            if sc.two_sided:
                (_, gp, ap, lp, _), (_, gm, am, lm, _) = per[1], per[-1]
                g_u, g_v = (gp + gm) / SQRT2, (gp - gm) / SQRT2
                floor = max((lp + lm + 8) * weps, rtol) * (ap + am) / SQRT2
                mr, vr = lead[f"lognorm.radial.{sc.index}.exp_avg"], lead[f"lognorm.radial.{sc.index}.exp_avg_sq"]
                gs = g_u.to(sdtype)
                mr2, vr2 = torch.lerp(mr, gs, 1 - b1), vr * b2 + (1 - b2) * gs * gs
                scalar_state += [(mr, mr2), (vr, vr2)]
                radial = ((mr2 / bc1) / (vr2.sqrt() / bc2**0.5 + eps)).to(work)
            else:
                (side, (_, gh, ah, ln, _)), = per.items()
                g_v, radial = side * gh, None
                floor = max((ln + 8) * weps, rtol) * ah
            g_v = torch.where(g_v.abs() <= floor, torch.zeros_like(g_v), g_v)
            vert = self._vertical(vertical, lead, sc.index, g_v, b1, b2, bc1, bc2, veps, sdtype, scalar_state)
            if sc.two_sided:
                logsteps.append({1: -lr * (radial + vert) / SQRT2, -1: -lr * (radial - vert) / SQRT2})
            else:
                (side,) = sc.sides
                logsteps.append({side: -lr * side * vert})

        # 6. W ← exp(Δlog ρ)·W − ηρu on the blocks; P θ·δ − η P u elsewhere; the mean part kept
        new = [wd - lr * u for wd, u in zip(Wd, U)]
        enew = entries(lay, new)
        for sc, per, steps in zip(scales, stats, logsteps):
            for side, members in sc.sides.items():
                rho, r = per[side][0], steps[side]
                for a, i in members:
                    enew[i].copy_(_bcast(torch.exp(r), eWd[i], a) * eWd[i] - lr * _bcast(rho, eU[i], a) * eU[i])
        for sh, c, length in shift_v:  # the vertical shift step (frozen by default): on the mean part
            vert = self._vertical(vertical, lead, sh.index, c, b1, b2, bc1, bc2, veps, sdtype, scalar_state)
            if vertical != "freeze":
                for a, i in sh.members:
                    eM[i].add_(_bcast(-lr * vert / math.sqrt(length), eM[i], a))
        final = [m + x for m, x in zip(mean, new)]

        if self.nonfinite != "unchecked":
            self._check(final, plan)

        def commit() -> None:  # all checks passed: parameters and state, written by DDCAdam.step last
            for k, (p, x) in enumerate(zip(params, final)):
                p.copy_(stored(lay, k, x))
            for st, m, v in zip(states, m_new, v_new):
                st["exp_avg"].copy_(m)
                st["exp_avg_sq"].copy_(v)
                st["step"] += 1
            for old, value in scalar_state:
                old.copy_(value)
        return commit

    def _vertical(self, vertical: str, lead: dict, f: int, c: Tensor, b1, b2, bc1, bc2, veps, sdtype,
                  pending: list) -> Tensor:
        """``V̂`` of family ``f`` from its (floored) gauge-mode scalar ``c``; new moments go to ``pending``."""
        if vertical == "freeze":
            return torch.zeros_like(c)
        if vertical == "sgd":
            return c
        m, v = lead[f"vertical.{f}.exp_avg"], lead[f"vertical.{f}.exp_avg_sq"]
        cs = c.to(sdtype)
        m2, v2 = torch.lerp(m, cs, 1 - b1), v * b2 + (1 - b2) * cs * cs
        pending += [(m, m2), (v, v2)]
        return ((m2 / bc1) / (v2.sqrt() / bc2**0.5 + veps)).to(c.dtype)

    def _check(self, final: list[Tensor], plan: dict) -> None:
        """One host sync: is every new value finite and representable in the parameters' dtype?"""
        fmax = torch.finfo(plan["bound"][0].dtype).max
        peak = extremes(final).abs()
        if bool((torch.isfinite(peak) & (peak <= fmax)).all()):
            return
        if self.nonfinite == "skip":
            raise _SkipStep
        for p, name in zip(plan["bound"], plan["names"]):
            if not bool(torch.isfinite(p).all()):
                raise GaugeError(self.binding.gauge_of(p), name, "the parameter is not finite (before this step)")
        bad = next(i for i, x in enumerate(final) if not (torch.isfinite(x).all() and x.abs().max() <= fmax))
        raise GaugeError(self.binding.gauge_of(plan["bound"][bad]), plan["names"][bad],
                         f"the lognorm update overflows {plan['bound'][bad].dtype} (nothing was changed)")
