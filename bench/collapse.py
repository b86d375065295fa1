"""Experiment: symmetry-induced collapse (seed 002, [Y] Thm 1 and Eq. 20) of ReLU units under weight decay.

    python bench/collapse.py [--steps 3000] [--seeds 3] [--decays 0.003 0.01 0.03]

A student ``Linear(8, 32) → ReLU → Linear(32, 4)`` fits a teacher with 3 hidden units (256 fixed points, soft-label
cross-entropy against the teacher's softmax, full batch), so most student units are not needed. Trained with GD
(SGD, lr 0.5, coupled decay γ: ``ℓ_γ = ℓ₀ + γ‖θ‖²/2``), AdamW (lr 1e-2, decoupled ``weight_decay = γ·0.5/1e-2``,
so that its per-step shrink ``lr·weight_decay`` is GD's) and DDCAdam (the same). Printed per optimizer and ``γ``:
hidden units at the symmetric point (every entry ≤ 1e-6) at the end, mean ± sd over seeds; how many surviving
units Eq. 20 says should collapse (``γ_k < γ/2`` at the end point); and the final ``ℓ₀``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from gaugemath.backends.torch import DDCAdam, bind
from torch import nn

from gaugemath.collapse import collapse_thresholds, collapsed


def data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=gen, dtype=torch.float64)
    teacher = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 4)).double()
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 1.5)
        return x, torch.softmax(teacher(x), -1)


def run(opt_name: str, gamma: float, seed: int, steps: int):
    x, y = data(100 + seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).double()
    loss = lambda m: F.cross_entropy(m(x), y)  # noqa: E731
    binding = bind(model, example=(x[:4],), loss="cross_entropy")
    gd_lr, lr = 0.5, 1e-2
    if opt_name == "gd":
        opt = torch.optim.SGD(model.parameters(), lr=gd_lr, weight_decay=gamma)
    elif opt_name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=gamma * gd_lr / lr)
    else:
        opt = DDCAdam(model.parameters(), binding=binding, lr=lr, weight_decay=gamma * gd_lr / lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(model).backward()
        opt.step()
    dead = next(iter(collapsed(binding).values()))
    gam = next(iter(collapse_thresholds(model, binding, loss).values()))
    # ℓ_γ = ℓ₀ + γ‖θ‖²/2 for GD's coupled decay (its gradient adds γθ): Eq. 20's γ is γ/2 here
    favoured = int(((gam < gamma / 2) & ~dead).sum())
    with torch.no_grad():
        return int(dead.sum()), favoured, float(loss(model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--decays", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'optimizer':9s} {'γ':>6s} {'collapsed /32':>14s} {'surviving, Eq.20 favours collapse':>34s} {'ℓ₀':>16s}")
    for gamma in args.decays:
        for name in ("gd", "adamw", "ddcadam"):
            res = [run(name, gamma, s, args.steps) for s in range(args.seeds)]
            dead, fav, l0 = zip(*res)
            sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
            print(f"{name:9s} {gamma:6.3f} {statistics.fmean(dead):7.1f} ± {sd(dead):4.1f} "
                  f"{statistics.fmean(fav):27.1f} ± {sd(fav):4.1f} {statistics.fmean(l0):9.4f} ± {sd(l0):.3f}")


if __name__ == "__main__":
    main()
