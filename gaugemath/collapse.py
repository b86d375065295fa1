"""Symmetry-induced collapse (seed 002, Ziyin et al.; ``../shared/spec/theory.md`` §3.4): which units a rescaling
symmetry plus weight decay drives to the symmetric point, and the seed's "differentiable constraint by symmetry"
(DCS) reparameterisation that uses this to make entries exactly sparse.

A rescaling gauge (a ReLU or SwiGLU unit: row ``u`` in, column ``w`` out, ``(u, w) → (a u, w/a)``) has a symmetric
point, ``(u, w) = 0``: its gradient vanishes there for every weight decay ``γ`` (an absorbing state, [Y] Thm 1),
and it is energetically favoured as soon as (Eq. 20)

    γ > γ_k = max(0, (ℓ₀(θ with unit k zeroed) − ℓ₀(θ)) / ‖θ|_k‖²),

``ℓ_γ = ℓ₀ + γ‖θ‖²``: zeroing the unit then lowers ``ℓ_γ``. :func:`collapse_thresholds` evaluates ``γ_k`` for every
unit of a binding's two-sided scale families (one forward pass per unit), :func:`collapsed` lists the units at the
symmetric point.

DCS ([Y] Eq. 10) reparameterises ``θ = (1 − M) ⊙ v + M ⊙ (w ⊙ u)`` (``M`` a 0/1 mask: the coordinate projector ``P``;
all ones is the "spred" Hadamard product ``θ = w ⊙ u``) and trains ``w, u, v`` with weight decay on ``w, u``: each
masked entry then has its own rescaling symmetry ``(w_i, u_i) → (a w_i, u_i / a)``, and ``γ(w_i² + u_i²) ≥
2γ|θ_i|`` with equality on the balanced point (the L1 equivalence, §4.5), so entries whose gradient cannot pay
``2γ`` collapse to exactly zero. The parameterisation is faithful: every ``θ`` is reachable, and :func:`dcs`
starts at the module's current values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gaugemath.backends._balance import two_sided
from gaugemath.errors import GaugeError


def _slice(t: Tensor, axis: str, k: int) -> Tensor:
    """Unit ``k``'s slice of ``t``: row ``k`` (a bias: entry ``k``) or column ``k``."""
    return t[k] if axis == "rows" else t[:, k]


def _unit_peak(t: Tensor, axis: str) -> Tensor:
    """Per unit, the largest ``|entry|`` of its slice of ``t``: ``(units,)``."""
    t = t.abs()
    if axis == "cols":
        return t.amax(dim=0)
    return t.reshape(t.shape[0], -1).amax(dim=1)


def _rescalings(binding) -> list:
    """The binding's two-sided scale families (the unit rescales and norm gains: a symmetric point to collapse to)."""
    return [fam for fam in binding.families if two_sided(fam)]


def collapsed(binding, tol: float = 1e-6) -> dict[str, Tensor]:
    """Per two-sided scale family of ``binding``, a boolean ``(units,)``: the units whose every slice (rows, columns,
    biases over all the family's tensors) has largest entry ``≤ tol`` — at the symmetric point to ``tol``."""
    ents = binding.entries(binding.to_work([p.detach() for _, p in binding.params]))
    out = {}
    for fam in _rescalings(binding):
        small = torch.ones(fam.units, dtype=torch.bool)
        for s, i in fam.members():
            small &= _unit_peak(ents[i], s.axis) <= tol
        out[fam.name] = small
    return out


@torch.no_grad()
def collapse_thresholds(model: nn.Module, binding, loss: Callable[[nn.Module], Tensor]) -> dict[str, Tensor]:
    """[Y] Eq. 20 per unit of every two-sided scale family: ``γ_k = max(0, (ℓ₀(θ, unit k zeroed) − ℓ₀(θ)) / ‖θ|_k‖²)``
    (``loss(model)``: ``ℓ₀`` on a fixed batch; ``‖θ|_k‖²`` over all the unit's slices). A coupled weight decay
    ``γ > γ_k`` in ``ℓ_γ = ℓ₀ + γ‖θ‖²`` makes zeroing unit ``k`` lower the loss. Units already at zero: ``inf``
    (nothing to compare). ``model`` is restored (bindings with transposed, permuted or row-view entries are
    refused before anything is changed)."""
    lay, params = binding.layout, [p for _, p in binding.params]
    fams = _rescalings(binding)
    for fam in fams:
        for _, i in fam.members():
            if i >= len(params) or lay.transpose[i] or lay.perms[i] is not None:
                raise GaugeError(fam.family.gauge, fam.name, "collapse_thresholds takes bindings whose tensors "
                                 "are bound as stored (no transposed, permuted or row-view entries)")
    base = float(loss(model))
    out = {}
    for fam in fams:
        gam = torch.full((fam.units,), float("inf"), dtype=torch.float64)
        for k in range(fam.units):
            slices = [_slice(params[i], s.axis, k) for s, i in fam.members()]
            saved = [sl.clone() for sl in slices]
            mass = sum(float((sl.double() ** 2).sum()) for sl in slices)
            try:
                for sl in slices:
                    sl.zero_()
                if mass > 0:
                    gam[k] = max(0.0, (float(loss(model)) - base) / mass)
            finally:
                for sl, value in zip(slices, saved):
                    sl.copy_(value)
        out[fam.name] = gam
    return out


class _Hadamard(nn.Module):
    """``θ = (1 − M) ⊙ v + M ⊙ (w ⊙ u)`` for :func:`dcs` (``torch.nn.utils.parametrize`` with three originals)."""

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return torch.where(self.mask, w * u, v)

    def right_inverse(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``w = 1``, ``u = θ`` on the mask, ``v = θ`` off it (zeros where unused): ``w ⊙ u = θ`` exactly.

        Not the balanced factors ``|w| = |u| = √|θ|``: gradient descent keeps the charge ``w² − u²`` of each entry
        (without decay; decay only shrinks it), so from a balanced start ``θ_i = ±w_i²`` can never change sign
        except through ``(w_i, u_i) = 0``, the absorbing symmetric point, and an entry whose start has the wrong
        sign is stuck there (measured: 3 of 5 true coefficients of a sparse regression). With ``w = 1`` the
        charge is ``1 − θ_i²`` and ``u_i`` crosses zero freely."""
        w = torch.where(self.mask, torch.ones_like(theta), torch.zeros_like(theta))
        u = torch.where(self.mask, theta, torch.zeros_like(theta))
        v = torch.where(self.mask, torch.zeros_like(theta), theta)
        return w, u, v


def dcs(module: nn.Module, name: str = "weight", mask: Tensor | None = None) -> nn.Module:
    """Reparameterise ``module.<name>`` as DCS ([Y] Eq. 10) in place, through ``torch.nn.utils.parametrize``: the
    module then has ``parametrizations.<name>.original0/1/2`` (``w``, ``u``, ``v``) as parameters and computes
    ``<name> = (1 − M) ⊙ v + M ⊙ (w ⊙ u)``. ``mask``: bool, the entries to sparsify (default all: the Hadamard
    product). Weight decay on ``w`` and ``u`` (the optimizer's, e.g. a param group) is the seed's ``α(‖w‖² + ‖u‖²)``;
    ``v`` usually takes none. Returns ``module``."""
    p = getattr(module, name)
    if mask is None:
        mask = torch.ones_like(p, dtype=torch.bool)
    if mask.shape != p.shape or mask.dtype != torch.bool:
        raise GaugeError("dcs", name, f"mask must be a bool tensor of the parameter's shape {tuple(p.shape)}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    parametrize.register_parametrization(module, name, _Hadamard(mask.to(p.device)), unsafe=True)
    return module


def factors(module: nn.Module, name: str = "weight") -> tuple[Tensor, Tensor, Tensor]:
    """``(w, u, v)`` of a :func:`dcs` parameter (for param groups: decay on ``w`` and ``u``)."""
    orig = module.parametrizations[name]
    return orig.original0, orig.original1, orig.original2
