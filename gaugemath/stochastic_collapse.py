"""Stochastic collapse (seed 002 §4.3 and App. B.1, Ziyin et al.; ``../shared/spec/theory.md`` §3.4): minibatch noise
makes a symmetric point attracting even where full-batch GD escapes it.

Near a point ``w₀`` fixed by a mirror ``R = I − 2P`` of the loss (``P = OOᵀ``; a rescaling ``(u, w) → (−u, −w)``, the
reflections of a rotation group), the symmetry-breaking part ``z = P w`` of SGD with learning rate ``λ`` and coupled
weight decay ``γ`` (``torch.optim.SGD``'s ``weight_decay``: the objective ``ℓ + γ‖w‖²/2``, whose Hessian is shifted by
``γ``; that is twice the ``γ`` of ``ℓ₀ + γ‖θ‖²`` in [Y] Eq. 1, 20 and 51) follows, to first order in ``z`` ([Y] Eq. 13),

    z_{t+1} = (1 − λ (H(B_t) + γ)) z_t,        H(B) = P ∇²ℓ_B(w₀) P

(``ℓ_B`` the loss of minibatch ``B``). Along a direction ``v`` that is an eigenvector of every ``H(B)`` (the seed's
commutation approximation, exact when the ``H(B)`` are multiples of one matrix), with eigenvalue
``h(B) = vᵀ H(B) v``, the motion is one-dimensional and ``z → 0`` in probability iff the Lyapunov exponent is
negative ([Y] Thm 5, Eq. 16):

    Λ(λ) = E_B log|1 − λ (h(B) + γ)| < 0.

Expanded to second order in ``λ`` this is ([Y] Eq. 9) ``λ > λ* = −2 E[h + γ] / E[(h + γ)²]``: a point where the
mean curvature is negative (GD escapes) still attracts SGD once ``λ`` exceeds ``λ*``, and the more so the larger the
batch-to-batch spread ``E[(h + γ)²]`` (small batches, noisy labels).

:func:`curvature` measures ``h(B)`` on any model by a Hessian-vector product; :func:`lyapunov` and
:func:`critical_lr` turn samples of ``h`` into the seed's two predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gaugemath.errors import GaugeError


def _samples(h: Tensor | Sequence[float], gamma: float) -> Tensor:
    t = torch.as_tensor(h, dtype=torch.float64).flatten()
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise GaugeError("stochastic collapse", "h", f"needs a non-empty set of finite curvatures, got shape "
                         f"{tuple(torch.as_tensor(h).shape)}")
    return t + gamma


def lyapunov(h: Tensor | Sequence[float], lr: float, gamma: float = 0.0) -> float:
    """[Y] Eq. 16: ``Λ = mean_B log|1 − lr (h(B) + γ)|`` over the per-batch curvatures ``h`` (any shape; each entry
    one equally likely batch). ``Λ < 0``: the symmetric point attracts SGD (``−inf`` if some batch maps ``z`` to
    exactly ``0``)."""
    x = 1.0 - lr * _samples(h, gamma)
    return float(torch.log(x.abs()).mean())


def critical_lr(h: Tensor | Sequence[float], gamma: float = 0.0) -> float:
    """[Y] Eq. 9: ``λ* = −2 E[h + γ] / E[(h + γ)²]``, the learning rate above which SGD collapses to the symmetric
    point to second order in ``λ``. ``0.0`` when ``E[h + γ] ≥ 0`` (already attracting for every small ``λ``: GD
    collapses too)."""
    x = _samples(h, gamma)
    mean, second = float(x.mean()), float((x * x).mean())
    if mean >= 0:
        return 0.0
    if not (math.isfinite(second) and second > 0):
        raise GaugeError("stochastic collapse", "h", f"E[(h + γ)²] = {second} is not a finite positive number in "
                         f"float64; rescale the curvatures")
    return -2.0 * mean / second


def lyapunov_root(h: Tensor | Sequence[float], gamma: float = 0.0, iters: int = 200) -> float:
    """The smallest ``λ > 0`` with ``Λ(λ) = 0`` when ``E[h + γ] < 0``: Eq. 16's exact collapse threshold, of which
    :func:`critical_lr` is the second-order estimate. ``0.0`` when ``E[h + γ] ≥ 0``; ``inf`` when no sample has
    ``h + γ > 0`` (then ``|1 − λ(h + γ)| ≥ 1`` for every ``λ > 0``: never attracted).

    On ``(0, 1/x_max)`` (``x = h + γ``, ``x_max`` its largest sample) every ``1 − λx`` is positive, so ``Λ`` is a
    sum of logarithms of positive linear functions: concave, ``Λ(0) = 0``, ``Λ'(0) = −E[x] > 0``, and ``Λ → −∞`` at
    ``1/x_max``. The smallest root is the one sign change there, found by bisection. It can lie within rounding of
    ``1/x_max``: then only a batch that maps ``z`` exactly to ``0`` makes ``Λ`` negative, which no run reaches —
    compare the root with ``1/x_max``."""
    x = _samples(h, gamma)
    if float(x.mean()) >= 0:
        return 0.0
    top = float(x.max())
    if top <= 0:
        return math.inf
    lo, hi = 0.0, 1.0 / top  # Λ > 0 just above lo, Λ(hi) = −inf
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if lyapunov(x, mid) >= 0:
            lo = mid
        else:
            hi = mid
    return hi


def curvature(loss: Callable[[], Tensor], params: Sequence[Tensor], direction: Sequence[Tensor]) -> float:
    """``h = vᵀ ∇²ℓ v / vᵀv`` at the current ``params`` (``loss()``: the loss of one batch; ``direction``: ``v``, one
    tensor per parameter, same shapes), by a Hessian-vector product (double backward). The parameters and their
    ``.grad`` are left as they were."""
    params = list(params)
    direction = [v.detach() for v in direction]  # (a direction that is itself a parameter is a constant here)
    if len(direction) != len(params):
        raise GaugeError("stochastic collapse", "direction", f"gives {len(direction)} tensors for "
                         f"{len(params)} parameters")
    for i, (p, v) in enumerate(zip(params, direction)):
        if v.shape != p.shape:
            raise GaugeError("stochastic collapse", f"direction[{i}]", f"has shape {tuple(v.shape)}, its parameter "
                             f"{tuple(p.shape)}")
    norm2 = sum(float((v.double() ** 2).sum()) for v in direction)
    if norm2 == 0:
        raise GaugeError("stochastic collapse", "direction", "is zero")
    grads = torch.autograd.grad(loss(), params, create_graph=True, allow_unused=True)
    terms = [(g * v.to(g.dtype)).sum() for g, v in zip(grads, direction) if g is not None]
    if not terms or not any(t.requires_grad for t in terms):
        return 0.0  # the loss does not depend on these parameters (or only linearly): no curvature
    gv = sum(terms)
    hv = torch.autograd.grad(gv, params, allow_unused=True)
    vhv = sum(float((h.double() * v.double()).sum()) for h, v in zip(hv, direction) if h is not None)
    return vhv / norm2
