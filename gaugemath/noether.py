"""Noether dynamics under adaptive optimizers (seed 003, Tanaka & Kunin; ``../shared/spec/theory.md`` §2.2).

For a symmetry with generators ``X_k(θ)`` the loss gradient is orthogonal to every orbit, ``⟨X_k(θ), ∇L(θ)⟩ = 0``.
Under gradient descent the charge current ``⟨Δθ, X_k(θ)⟩ = −η⟨∇L, X_k⟩`` therefore vanishes, and the charges move
only at second order (``Q' − Q = η² gᵀA_k g`` for a quadratic charge; [TK]'s kinetic symmetry breaking, theory.md
§2.3–2.4, ``gaugemath.testing``'s GD law).

An adaptive optimizer steps in a metric: ``Δθ = −η P m̂`` with ``P = diag(1/(√v̂ + ε))`` (Adam; RMSProp is
``β₁ = 0``). [TK]'s Noether relation for a non-Euclidean kinetic energy (Eq. 11, overdamped Eq. 13) says the
conserved current is the *metric* one, ``⟨P^{-1} q̇, ∂_s Q⟩``, not the Euclidean one. Discretely this is exact
(the inferred discrete form of Eq. 13):

    J_P,k = ⟨P^{-1} Δθ, X_k(θ)⟩ = −η ⟨m̂, X_k(θ)⟩ − ηλ ⟨P^{-1} θ, X_k(θ)⟩          (AdamW, decoupled decay λ)

* ``β₁ = 0`` (RMSProp), ``λ = 0``: ``m̂ = g`` and ``J_P = 0`` for every symmetry, at every step, exactly;
* translations (the cross-entropy shift, ``X_k`` constant): ``m̂`` is a sum of gradients each orthogonal to
  ``X_k``, so ``J_P = −ηλ⟨P^{-1}θ, X_k⟩`` with momentum too (zero without decay);
* scalings and rotations with momentum: the past gradients are orthogonal to ``X_k`` at *their* points, so
  ``⟨m̂, X_k(θ_t)⟩`` is ``O(η)`` and ``J_P = O(η²)`` per step.

The Euclidean current ``⟨Δθ, X_k⟩ = −η⟨P m̂, X_k⟩`` is first order in ``η`` and does not vanish: the charges that
GD conserves drift under Adam at a rate that does not go to zero with the step size (over a fixed physical time
``t = nη``, GD's drift halves when ``η`` halves, Adam's does not). This is the "non-Euclidean metric" term of
[TK] Eq. 11: the metric, not the kinetic energy, breaks the symmetry. ``tests/test_noether.py`` checks all of
this on a Hugging Face Llama (RMSNorm gains, SwiGLU units, RoPE heads, the cross-entropy shift).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gaugemath.errors import GaugeError


def _entries(binding, tensors: list[Tensor], what: str, absolute: bool = False) -> list[Tensor]:
    """The binding's work entries (fp64) of per-parameter ``tensors``, after checking there is one per bound
    parameter, shaped like it (else a :class:`GaugeError` naming it)."""
    if len(tensors) != len(binding.params):
        raise GaugeError("noether", what, f"{len(tensors)} tensors given, the binding has {len(binding.params)} "
                         "parameters (binding order)")
    for (name, p), t in zip(binding.params, tensors):
        if tuple(t.shape) != tuple(p.shape):
            raise GaugeError(binding.gauge_of(p), name, f"{what}: shape {tuple(t.shape)}, the parameter's is "
                             f"{tuple(p.shape)}")
    return binding.entries(binding.to_work([t.detach().abs() if absolute else t.detach() for t in tensors],
                                           torch.float64))


def current(binding, theta: list[Tensor], direction: list[Tensor]) -> dict[str, Tensor]:
    """``⟨direction, X_k(θ)⟩`` per family (per unit; heads: the skew ``d_head × d_head`` block per head) for the
    binding's tensors ``theta`` and ``direction`` (binding order, stored layout): the charge current of a step
    ``direction = Δθ`` (Euclidean), or of ``P^{-1}Δθ`` (the metric current)."""
    th, d = _entries(binding, theta, "theta"), _entries(binding, direction, "direction")
    return {f.name: f.coords(th, d) for f in binding.families}


def current_size(binding, theta: list[Tensor], direction: list[Tensor]) -> dict[str, Tensor]:
    """``|X_k|ᵀ|direction|`` per family: the sum :func:`current` takes with every term replaced by its absolute value
    (heads: ``|U||Θ|ᵀ + |Θ||U|ᵀ`` per head), the scale of a current's round-off."""
    th, d = _entries(binding, theta, "theta", True), _entries(binding, direction, "direction", True)
    out = {}
    for f in binding.families:
        if f.kind == "head":
            c = f._head_rows(d) @ f._head_rows(th).transpose(1, 2)
            out[f.name] = c + c.transpose(1, 2)
        else:
            out[f.name] = f._abs_coords(th, d)
    return out


def adamw_metric_current(binding, theta: list[Tensor], exp_avg: list[Tensor], exp_avg_sq: list[Tensor], step: int,
                         lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                         eps: float = 1e-8) -> dict[str, Tensor]:
    """The predicted metric current ``−η⟨m̂, X_k(θ)⟩ − ηλ⟨P^{-1}θ, X_k(θ)⟩`` of ``torch.optim.AdamW``'s next step, from
    the moments *after* it updated them (its ``exp_avg``, ``exp_avg_sq`` at step count ``step``): ``m̂ = m/(1−β₁ᵗ)``,
    ``P^{-1} = √v/√(1−β₂ᵗ) + ε`` (torch's formula)."""
    m_hat = [m / (1 - betas[0] ** step) for m in exp_avg]
    p_inv = adamw_preconditioner_inverse(exp_avg_sq, step, betas[1], eps)
    a = current(binding, theta, m_hat)
    b = current(binding, theta, [p * t for p, t in zip(p_inv, theta)])
    return {k: -lr * a[k] - lr * weight_decay * b[k] for k in a}


def adamw_preconditioner_inverse(exp_avg_sq: list[Tensor], step: int, beta2: float = 0.999,
                                 eps: float = 1e-8) -> list[Tensor]:
    """``P^{-1} = √v/√(1−β₂ᵗ) + ε``, per tensor, as ``torch.optim.AdamW`` divides by it."""
    return [v.sqrt() / (1 - beta2**step) ** 0.5 + eps for v in exp_avg_sq]
