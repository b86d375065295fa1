"""Experiment: stochastic collapse (seed 002 §4.3, Eq. 9 and Eq. 16) — SGD without weight decay makes a sparse
regression sparse at a large learning rate, and the Lyapunov exponent predicts which entries go.

    python bench/stochastic_collapse.py [--seeds 3] [--steps 20000] [--lrs 0.01 0.03 0.06 0.1 0.15] [--adam]

Data: ``y = x·β + ε``, ``x ~ N(0, I₅)``, ``ε ~ N(0, 1)``, 2,000 points, ``β = (1, 0.5, 0.2, 0.05, 0)``. Model: a
bias-free ``nn.Linear(5, 1)`` under :func:`gaugemath.collapse.dcs` (``θ = w ⊙ u``, started at the least-squares
fit with ``w = 1``), trained by SGD on one sample per step, no weight decay. Entry ``i`` has the mirror
``(w_i, u_i) → (−w_i, −u_i)``; at its symmetric point the per-sample Hessian on ``(w_i, u_i)`` is
``[[0, −c], [−c, 0]]``, ``c = r x_i``, so along ``(1, ±1)/√2`` the curvature is ``∓c`` (measured here by
:func:`gaugemath.stochastic_collapse.curvature`, one Hessian-vector product per sample).

Printed per entry: ``λ*`` ([Y] Eq. 9, the second-order threshold, from the direction of negative mean curvature)
and ``λ_Λ`` (the root of Eq. 16's ``Λ``), both at the least-squares background; then per learning rate the
entries collapsed (``|θ_i| < 1e-6`` at the end, mean over seeds) and how often Eq. 16 evaluated at the run's own
end point (each entry's ``(w_i, u_i)`` set to 0, Assumption 2's stationary background) predicts the outcome.
``--adam`` adds ``torch.optim.Adam`` on the factors (the seed: "happens for Adam-type dynamics as well").
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from torch import nn

from gaugemath.collapse import dcs, factors
from gaugemath.stochastic_collapse import critical_lr, curvature, lyapunov, lyapunov_root

BETA = (1.0, 0.5, 0.2, 0.05, 0.0)
N = 2000
TOL = 1e-6


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, len(BETA), generator=gen, dtype=torch.float64)
    y = x @ torch.tensor(BETA, dtype=torch.float64) + torch.randn(N, generator=gen, dtype=torch.float64)
    return x, y


def model(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    layer = nn.Linear(x.shape[1], 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.linalg.lstsq(x, y[:, None]).solution.T)
    return dcs(layer)


def loss(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((layer(x)[:, 0] - y) ** 2).mean()


def curvatures(layer: nn.Module, x: torch.Tensor, y: torch.Tensor, i: int, sign: int) -> torch.Tensor:
    """Per sample, the curvature along ``(e_i, sign·e_i)`` on ``(w, u)`` with entry ``i`` at its symmetric point."""
    w, u, _ = factors(layer)
    saved = (w.detach().clone(), u.detach().clone())
    with torch.no_grad():
        w[0, i], u[0, i] = 0.0, 0.0
    dw, du = torch.zeros_like(w), torch.zeros_like(u)
    dw[0, i], du[0, i] = 1.0, float(sign)
    try:
        return torch.tensor([curvature(lambda k=k: loss(layer, x[k:k + 1], y[k:k + 1]), [w, u], [dw, du])
                             for k in range(x.shape[0])], dtype=torch.float64)
    finally:
        with torch.no_grad():
            w.copy_(saved[0])
            u.copy_(saved[1])


def predicted(layer, x, y, i: int, lr: float) -> bool:
    """Eq. 16 for entry ``i``: both mirror directions have ``Λ < 0``."""
    return max(lyapunov(curvatures(layer, x, y, i, s), lr) for s in (1, -1)) < 0


def train(x, y, lr: float, steps: int, seed: int, adam: bool = False) -> nn.Module:
    layer = model(x, y)
    w, u, _ = factors(layer)
    opt = torch.optim.Adam([w, u], lr=lr) if adam else torch.optim.SGD([w, u], lr=lr)
    gen = torch.Generator().manual_seed(1000 + seed)
    order = torch.randint(0, x.shape[0], (steps,), generator=gen)
    for k in order.tolist():
        opt.zero_grad()
        loss(layer, x[k:k + 1], y[k:k + 1]).backward()
        opt.step()
    return layer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.06, 0.1, 0.15])
    ap.add_argument("--adam", action="store_true")
    ap.add_argument("--thresholds-only", action="store_true", help="print the thresholds, train nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = len(BETA)
    print(f"β = {BETA}, {N} points, batch 1, no weight decay, {args.steps} steps, {args.seeds} seeds")
    print("thresholds at the least-squares background (mean ± sd over seeds):")
    for i in range(d):
        star, root, edge = [], [], []
        for seed in range(args.seeds):
            x, y = data(seed)
            layer = model(x, y)
            hs = [curvatures(layer, x, y, i, s) for s in (1, -1)]
            neg = min(hs, key=lambda h: float(h.mean()))  # the direction GD escapes along (mean curvature < 0)
            star.append(critical_lr(neg))
            root.append(max(lyapunov_root(h) for h in hs))
            edge.append(max(lyapunov_root(h) * float(h.max()) for h in hs if float(h.max()) > 0))
        print(f"  entry {i} (β = {BETA[i]:g}): Eq. 9 λ* = {_ms(star)}, Eq. 16 root λ_Λ = {_ms(root)} "
              f"(λ_Λ·max h = {max(edge):.9f}: 1 means only a sample that maps z to exactly 0 collapses it)")
    arms = [] if args.thresholds_only else [("SGD", False)] + ([("Adam", True)] if args.adam else [])
    for name, adam in arms:
        print(f"{name}: lr, entries collapsed (|θ_i| < {TOL:g}) per entry (fraction of seeds), Eq. 16 agrees")
        for lr in args.lrs:
            hits = [0] * d
            agree, total, diverged = 0, 0, 0
            for seed in range(args.seeds):
                x, y = data(seed)
                layer = train(x, y, lr, args.steps, seed, adam)
                theta = layer.weight.detach()[0]
                if not bool(torch.isfinite(theta).all()):
                    diverged += 1
                    continue
                for i in range(d):
                    out = abs(float(theta[i])) < TOL
                    hits[i] += out
                    if not adam:
                        agree += predicted(layer, x, y, i, lr) == out
                        total += 1
            runs = args.seeds - diverged
            frac = " ".join(f"{h / runs:.2f}" if runs else "  - " for h in hits)
            tail = f", Eq. 16 agrees on {agree}/{total}" if total else ""
            print(f"  lr {lr:<6g} collapsed: {frac}{tail}" + (f"  ({diverged} diverged)" if diverged else ""))


def _ms(v: list[float]) -> str:
    if not all(map(math.isfinite, v)):
        return "inf (some seeds)" if any(map(math.isfinite, v)) else "inf"
    return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


if __name__ == "__main__":
    main()
