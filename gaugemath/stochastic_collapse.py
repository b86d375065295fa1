"""Stochastic collapse (seed 002 §4.3 and App. B.1, Ziyin et al.; ``../shared/spec/theory.md`` §3.4): minibatch noise
makes a symmetric point attracting even where full-batch GD escapes it.

Near a point ``w₀`` fixed by a mirror ``R = I − 2P`` of the loss (``P = OOᵀ``; a rescaling ``(u, w) → (−u, −w)``, the
reflections of a rotation group), the symmetry-breaking part ``z = P w`` of SGD with learning rate ``λ`` and coupled
weight decay ``γ`` follows, to first order in ``z`` ([Y] Eq. 13),

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
    return 0.0 if mean >= 0 else -2.0 * mean / second


def lyapunov_root(h: Tensor | Sequence[float], gamma: float = 0.0, hi: float | None = None,
                  iters: int = 200) -> float:
    """The smallest ``λ > 0`` with ``Λ(λ) = 0`` when ``E[h + γ] < 0`` (Eq. 16's exact collapse threshold, of which
    :func:`critical_lr` is the second-order estimate), by bisection on ``(0, hi]`` (default ``2 λ*`` widened until
    ``Λ(hi) < 0``). ``0.0`` when ``E[h + γ] ≥ 0``; ``inf`` when ``Λ`` stays positive up to ``1e6 λ*``."""
    x = _samples(h, 0.0)
    if float((x + gamma).mean()) >= 0:
        return 0.0
    lo, hi = 0.0, hi if hi is not None else 2.0 * critical_lr(x, gamma)
    top = 1e6 * critical_lr(x, gamma)
    while lyapunov(x, hi, gamma) >= 0:
        lo, hi = hi, 2.0 * hi
        if hi > top:
            return math.inf
    for _ in range(iters):  # Λ > 0 just above 0 (Λ ≈ −λ E[h + γ]), Λ(hi) < 0
        mid = 0.5 * (lo + hi)
        if lyapunov(x, mid, gamma) >= 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 4 * torch.finfo(torch.float64).eps * hi:
            break
    return hi


def curvature(loss: Callable[[], Tensor], params: Sequence[Tensor], direction: Sequence[Tensor]) -> float:
    """``h = vᵀ ∇²ℓ v / vᵀv`` at the current ``params`` (``loss()``: the loss of one batch; ``direction``: ``v``, one
    tensor per parameter, same shapes), by a Hessian-vector product (double backward). The parameters and their
    ``.grad`` are left as they were."""
    params = list(params)
    direction = list(direction)
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
    grads = torch.autograd.grad(loss(), params, create_graph=True)
    gv = sum((g * v.to(g.dtype)).sum() for g, v in zip(grads, direction))
    hv = torch.autograd.grad(gv, params, allow_unused=True)
    vhv = sum(float((h.double() * v.double()).sum()) for h, v in zip(hv, direction) if h is not None)
    return vhv / norm2
