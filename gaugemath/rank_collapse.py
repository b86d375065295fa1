"""Rank collapse under rotation symmetry (seed 002 Thm 2 and Thm 4, Eq. 51; ``../shared/spec/theory.md`` §3.4), on
the rotation families of a binding.

A per-head rotation gauge acts on the head's rows, ``M_h ← R M_h`` with ``M_h = [W_Q,h | b_Q,h | W_K,h | b_K,h]``
(``d_head × cols``: the head's rows of every tensor the family moves, side by side). Without RoPE the group is
``O(d_head)``, which holds every mirror ``R = I − 2 n nᵀ``; so ([Y] Thm 2):

1. if ``nᵀ M_h = 0`` then ``nᵀ ∇_{M_h} ℓ_γ = 0`` for every weight decay ``γ`` (``ℓ_γ = ℓ₀ + γ‖θ‖²``): a head that
   has lost a direction never regains it under gradient descent, at any learning rate;
2. projecting a direction out is energetically favoured once ([Y] Eq. 51, with ``O = n``)

       γ > γ_n = (ℓ₀((I − n nᵀ)·θ) − ℓ₀(θ)) / ‖nᵀ M_h‖²

   (the projection lowers ``‖θ‖²`` by exactly ``‖nᵀ M_h‖²``).

With RoPE the group of a head is ``SO(2)`` per frequency plane, whose only mirror is the half turn ``−I = I − 2P``
with ``P`` the whole plane: the stationary set is the plane's rows being zero in every tensor (rank drops by two),
and ``γ`` is compared with the cost of zeroing the plane.

:func:`rank_spectra` gives the singular values of every ``M_h`` (planes: of the ``2 × cols`` block), :func:`collapsed`
the directions at the symmetric point, :func:`rank_thresholds` ``γ_n`` for each head's weakest direction (the
smallest singular vector, the one the decay removes first). The group action is the binding's own, so transposed,
fused and permuted layouts (GPT-2's ``Conv1D``, ``in_proj``, ``rotate_half``) are handled as for the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

KINDS = ("head", "plane")


def _families(binding) -> list[tuple[int, object]]:
    return [(f, fam) for f, fam in enumerate(binding.families) if fam.kind in KINDS]


def _entries(binding) -> list[Tensor]:
    """The binding's work-layout entries in float64 (one conversion, shared by every family)."""
    return binding.entries(binding.to_work([p.detach() for _, p in binding.params], torch.float64))


def _blocks(fam, ents: list[Tensor]) -> Tensor:
    """Per unit the rows the family rotates, side by side: heads ``(units, d_head, cols)``, planes
    ``(units, 2, cols)`` (from the work-layout ``ents``)."""
    if fam.kind == "head":
        return fam._head_rows(ents)
    return torch.cat([ents[i].reshape(fam.units, 2, -1) for _, i in fam.members()], dim=2)


def rank_spectra(binding) -> dict[str, Tensor]:
    """Per rotation family of ``binding`` (heads, RoPE planes) the singular values of each unit's rows, descending,
    ``(units, d_head)`` or ``(units, 2)``, float64."""
    ents = _entries(binding)
    return {fam.name: torch.linalg.svdvals(_blocks(fam, ents)) for _, fam in _families(binding)}


def collapsed(binding, tol: float = 1e-6) -> dict[str, Tensor]:
    """Per rotation family, per unit: heads, how many directions are at the symmetric point (singular values
    ``≤ tol``: ``d_head − rank``, int); RoPE planes, ``True`` where the whole plane is (both ``≤ tol``, the only
    stationary set of ``SO(2)``)."""
    kinds = {fam.name: fam.kind for _, fam in _families(binding)}
    small = {name: sv <= tol for name, sv in rank_spectra(binding).items()}
    return {name: s.sum(dim=1) if kinds[name] == "head" else s.all(dim=1) for name, s in small.items()}


def _projector(fam, unit: int, blocks: Tensor, dtype: torch.dtype, device):
    """The group-algebra element that removes unit ``unit``'s weakest direction (heads: ``I − n nᵀ`` on that head,
    identity elsewhere; planes: the plane zeroed, ``(c, s) = (0, 0)``), and ``‖P θ‖²``."""
    if fam.kind == "head":
        u, s, _ = torch.linalg.svd(blocks[unit], full_matrices=False)
        n = u[:, -1]
        h = torch.eye(fam.d_head, dtype=dtype, device=device).repeat(fam.units, 1, 1)
        h[unit] -= torch.outer(n, n).to(dtype)
        return h, float(s[-1]) ** 2
    c = torch.ones(fam.units, dtype=dtype, device=device)
    sn = torch.zeros(fam.units, dtype=dtype, device=device)
    c[unit] = 0.0
    return (c, sn), float((blocks[unit] ** 2).sum())


@torch.no_grad()
def rank_thresholds(model: nn.Module, binding, loss: Callable[[nn.Module], Tensor],
                    tol: float = 1e-6) -> dict[str, Tensor]:
    """[Y] Eq. 51 per unit of every rotation family: ``γ = max(0, (ℓ₀(P·θ) − ℓ₀(θ)) / ‖θ − P·θ‖²)`` with ``P`` the
    projection that removes the head's weakest direction (its smallest singular vector; RoPE planes: the whole
    plane), applied by the binding's group action. ``loss(model)``: ``ℓ₀`` on a fixed batch. A coupled decay
    ``γ`` above it in ``ℓ_γ = ℓ₀ + γ‖θ‖²`` makes the lower-rank point better. Units already at the symmetric point
    (as :func:`collapsed` says with the same ``tol``: the weakest singular value, for planes both, ``≤ tol``):
    ``inf``. ``model`` is restored (the family's own tensors are saved and written back, bit for bit)."""
    params = [p for _, p in binding.params]
    lay = binding.layout
    base = float(loss(model))
    out = {}
    ents = _entries(binding)
    for f, fam in _families(binding):
        blocks = _blocks(fam, ents)
        spectra = torch.linalg.svdvals(blocks)
        done = spectra[:, -1] <= tol if fam.kind == "head" else (spectra <= tol).all(dim=1)
        mine = sorted({lay.base(i) for _, i in fam.members()})
        ref = params[mine[0]]
        gam = torch.full((fam.units,), float("inf"), dtype=torch.float64)
        for k in range(fam.units):
            if bool(done[k]):
                continue
            h, mass = _projector(fam, k, blocks, ref.dtype, ref.device)
            saved = {i: params[i].detach().clone() for i in mine}
            try:
                binding.act([h if j == f else None for j in range(len(binding.families))],
                            [p.data for p in params], only=[f])
                gam[k] = max(0.0, (float(loss(model)) - base) / mass)
            finally:
                for i, value in saved.items():
                    params[i].data.copy_(value)
        out[fam.name] = gam
    return out
