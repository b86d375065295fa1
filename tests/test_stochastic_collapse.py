"""Stochastic collapse (seed 002 §4.3, Eq. 9 and Thm 5 / Eq. 16; gaugemath.stochastic_collapse): the curvature probe
against a hand-derived Hessian, Eq. 9 as Eq. 16's second-order root, and the seed's claim that SGD without weight
decay collapses exactly the entries Eq. 16 says it will, while full-batch GD at the same rate does not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gaugemath.collapse import dcs, factors
from gaugemath.errors import GaugeError
from gaugemath.stochastic_collapse import critical_lr, curvature, lyapunov, lyapunov_root

BETA = torch.tensor([1.0, 0.5, 0.2, 0.05, 0.0], dtype=torch.float64)


def _regression(seed: int = 0, n: int = 2000):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = x @ BETA + torch.randn(n, generator=gen, dtype=torch.float64)
    layer = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.linalg.lstsq(x, y[:, None]).solution.T)
    return x, y, dcs(layer)


def _loss(layer, x, y):
    return 0.5 * ((layer(x)[:, 0] - y) ** 2).mean()


def _c(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, i: int) -> torch.Tensor:
    """Per sample ``c = r x_i`` with entry ``i`` zeroed, written by hand: at ``(w_i, u_i) = 0`` the sample loss
    ``½(y − Σ_j w_j u_j x_j)²`` has ``∂²/∂w_i∂u_i = −r x_i`` and ``∂²/∂w_i² = (u_i x_i)² = 0``, so the curvature
    along ``(1, ±1)/√2`` is ``∓c``."""
    t = theta.clone()
    t[i] = 0.0
    return (y - x @ t) * x[:, i]


def test_curvature_is_the_hand_derived_hessian_at_the_symmetric_point():
    x, y, layer = _regression()
    w, u, _ = factors(layer)
    i = 3
    with torch.no_grad():
        w[0, i], u[0, i] = 0.0, 0.0
    theta = layer.weight.detach()[0]
    c = _c(theta, x, y, i)
    grads_before = [p.grad for p in (w, u)]
    for k in range(8):
        one = lambda k=k: _loss(layer, x[k:k + 1], y[k:k + 1])  # noqa: E731
        for sign in (1, -1):
            dw, du = torch.zeros_like(w), torch.zeros_like(u)
            dw[0, i], du[0, i] = 1.0, float(sign)
            h = curvature(one, [w, u], [dw, du])
            # fp64: a handful of products and sums, so 1e-12 relative leaves a margin of ~10⁴ ε
            assert h == pytest.approx(-sign * float(c[k]), rel=1e-12, abs=1e-15)
        dw = torch.zeros_like(w)
        dw[0, i] = 1.0
        assert curvature(one, [w, u], [dw, torch.zeros_like(u)]) == 0.0  # ∂²/∂w_i² = 0 exactly at u_i = 0
    assert [p.grad for p in (w, u)] == grads_before  # .grad untouched
    with pytest.raises(GaugeError, match=r"direction\[1\].*shape \(5,\).*\(1, 5\)"):
        curvature(lambda: _loss(layer, x, y), [w, u], [dw, torch.zeros(5, dtype=torch.float64)])
    with pytest.raises(GaugeError, match="zero"):
        curvature(lambda: _loss(layer, x, y), [w, u], [torch.zeros_like(w), torch.zeros_like(u)])


def test_eq9_is_the_second_order_root_of_eq16():
    """``log|1 − x| = −x − x²/2 + R``, ``|R| ≤ |x|³ / (3 (1 − |x|))`` for ``|x| < 1``: so at ``λ*`` (where the quadratic
    part vanishes exactly) ``|Λ(λ*)| ≤ E|λ* (h + γ)|³ / (3 (1 − max|λ* (h + γ)|))``; and the exact root of ``Λ``
    lies within the bracket where that remainder can change the sign."""
    gen = torch.Generator().manual_seed(3)
    h = -0.02 + 0.3 * torch.randn(4000, generator=gen, dtype=torch.float64)  # mean < 0: GD escapes
    gamma = 0.005
    lam = critical_lr(h, gamma)
    x = lam * (h + gamma)
    assert float(x.abs().max()) < 1
    quad = float((-x - x * x / 2).mean())
    assert abs(quad) <= 1e-15  # λ* zeroes the second-order part (a ratio of the same two means)
    bound = float((x.abs() ** 3).mean()) / (3 * (1 - float(x.abs().max())))
    assert abs(lyapunov(h, lam, gamma)) <= bound
    root = lyapunov_root(h, gamma)
    assert lyapunov(h, root * (1 - 1e-9), gamma) > 0 > lyapunov(h, root * (1 + 1e-9), gamma)
    assert abs(root - lam) / lam < 0.2  # small spread: the second-order estimate is close (here 4 %)
    assert critical_lr(h + 0.05) == 0.0 and lyapunov_root(h + 0.05) == 0.0  # mean ≥ 0: GD attracted already
    with pytest.raises(GaugeError, match="finite"):
        lyapunov(torch.tensor([1.0, float("nan")]), 0.1)


def _near_symmetric(seed: int = 0):
    """The regression at its least-squares fit, the two weak entries moved next to their symmetric point
    (``w_i = u_i = 1e-2``, ``θ_i = 1e-4``)."""
    x, y, layer = _regression(seed)
    w, u, _ = factors(layer)
    with torch.no_grad():
        for i in (3, 4):
            w[0, i], u[0, i] = 1e-2, 1e-2
    return x, y, layer, w, u


def test_sgd_collapses_the_entries_eq16_predicts_and_gd_escapes():
    """[Y] §4.3 on the DCS regression (``θ = w ⊙ u``, ``β = (1, .5, .2, .05, 0)``, noise 1), no weight decay, from the
    least-squares fit with the two weak entries next to their symmetric point: SGD on one sample per step at
    ``λ = 0.1`` puts them at it (``|θ_i| < 1e-6``) and keeps the three strong ones, exactly as Eq. 16's sign at the
    run's end point (Assumption 2's background) says; full-batch GD at the same ``λ`` is repelled (the escape
    direction's mean curvature is negative) and returns them to the least-squares values. Thresholds: the seed's
    1e-6 for collapsed; the collapsed entries end below 1e-20, the kept ones above 1e-2."""
    x, y, layer, w, u = _near_symmetric()
    lr = 0.1
    opt = torch.optim.SGD([w, u], lr=lr)
    order = torch.randint(0, x.shape[0], (8000,), generator=torch.Generator().manual_seed(1000)).tolist()
    for k in order:
        opt.zero_grad()
        _loss(layer, x[k:k + 1], y[k:k + 1]).backward()
        opt.step()
    theta = layer.weight.detach()[0]
    exps = [max(lyapunov(_c(theta, x, y, i), lr), lyapunov(-_c(theta, x, y, i), lr)) for i in range(5)]
    collapsed = [abs(float(t)) < 1e-6 for t in theta]
    assert collapsed == [e < 0 for e in exps] == [False, False, False, True, True]
    assert all(abs(float(t)) > 1e-2 for t, c in zip(theta, collapsed) if not c)

    x, y, layer, w, u = _near_symmetric()
    gd = torch.optim.SGD([w, u], lr=lr)
    for _ in range(2000):
        gd.zero_grad()
        _loss(layer, x, y).backward()
        gd.step()
    theta = layer.weight.detach()[0]
    ols = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    assert all(abs(float(theta[i])) > 100 * 1e-4 for i in (3, 4))  # repelled from the symmetric point
    assert torch.allclose(theta, ols, rtol=0, atol=1e-3)


def test_lyapunov_root_is_the_smallest_root_and_curvature_takes_a_parameter_as_direction():
    """The smallest root of ``Λ`` lies below ``1/max(h + γ)``, where ``Λ`` is concave: for ``x = (−3, −3, −3, 1)`` it is
    about 0.98 (the doubling search it replaced reported ``inf`` there); with no positive sample there is none. A
    direction that is itself a parameter is a constant of the probe (``Σp³``: ``vᵀHv/vᵀv = Σ6p³/Σp²``, not the
    extra ``J_vᵀg`` term), and ``.grad`` already set is left as it was."""
    x = torch.tensor([-3.0, -3.0, -3.0, 1.0], dtype=torch.float64)
    root = lyapunov_root(x)
    assert 0.9 < root < 1.0
    assert lyapunov(x, root * (1 - 1e-9)) > 0 > lyapunov(x, root * (1 + 1e-9))
    assert lyapunov_root(torch.tensor([-1.0, -0.5, 0.0], dtype=torch.float64)) == float("inf")
    with pytest.raises(GaugeError, match="finite positive"):
        critical_lr(torch.tensor([-1e200, 1e199], dtype=torch.float64))

    p = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    sentinel = torch.full_like(p, 7.0)
    p.grad = sentinel
    h = curvature(lambda: (p ** 3).sum(), [p], [p])
    q = p.detach()
    assert h == pytest.approx(float((6 * q ** 3).sum() / (q ** 2).sum()), rel=1e-14)
    assert p.grad is sentinel and bool((p.grad == 7.0).all())
