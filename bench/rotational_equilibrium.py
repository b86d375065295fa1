"""Experiment: measured vs predicted rotational equilibrium (seed 004, [K] Table 1) on a scale-invariant system.

    python bench/rotational_equilibrium.py [--steps 3000] [--start 1500] [--seeds 3] [--arms adamw sgdm ...]

[K] App. J's system with the gains fixed at 1, ``f(X) = BN(W X)`` (``W`` 128×128, batch statistics, no affine;
every row of ``W`` is scale-invariant), random inputs and targets each step (batch 32): the random-walk regime the
formulas assume. Per optimizer (AdamW lr 1e-2 wd 0.5; SGDM lr 0.1, momentum 0.9, wd 5e-3; Lion lr 1e-4, wd 1,
betas 0.9/0.99, written here from the seed's Eq. 52–54; and AdamW/SGDM inside :class:`RotationalWrapper`): the
row norm, RMS update and angle per step, averaged over steps ``--start``…``--steps`` and rows, mean ± sd over
seeds, next to :func:`gaugemath.rotational.equilibrium`'s prediction (SGDM's norm and RMS update read the measured
``E‖g̃‖²`` and ``E‖g‖²``). The relaxation time is about ``1/(2ηλ)`` steps: 100 for AdamW and SGDM here, 5000 for
Lion (``--arms lion --steps 30000 --start 20000``).
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from gaugemath.rotational import RotationalWrapper, RotationMeter, equilibrium, rows


class Lion(torch.optim.Optimizer):
    """[K] Eq. 52–54 (Chen et al.): ``v = sign(β₁m + (1−β₁)g)``, ``p ← p − η(v + λp)``, ``m ← β₂m + (1−β₂)g``."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                v = torch.sign(b1 * m + (1 - b1) * p.grad)
                p.mul_(1 - g["lr"] * g["weight_decay"]).add_(v, alpha=-g["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


ARMS = {
    "adamw": ("adamw", lambda gr: torch.optim.AdamW(gr, lr=1e-2, weight_decay=0.5), False, dict()),
    "sgdm": ("sgdm", lambda gr: torch.optim.SGD(gr, lr=0.1, momentum=0.9, weight_decay=5e-3), False, dict()),
    "lion": ("lion", lambda gr: Lion(gr, lr=1e-4, betas=(0.9, 0.99), weight_decay=1.0), False, dict(betas=(0.9, 0.99))),
    "wrapped adamw": ("adamw", lambda gr: torch.optim.AdamW(gr, lr=1e-2, weight_decay=0.5), True, dict()),
    "wrapped sgdm": ("sgdm", lambda gr: torch.optim.SGD(gr, lr=0.1, momentum=0.9, weight_decay=5e-3), True, dict()),
}
HYPER = {"adamw": (1e-2, 0.5), "sgdm": (0.1, 5e-3), "lion": (1e-4, 1.0)}


def run(arm: str, seed: int, steps: int, start: int, c: int = 128, k: int = 128, batch: int = 32) -> dict:
    kind, make, wrap, _ = ARMS[arm]
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(k, c) / math.sqrt(c))
    other = torch.nn.Parameter(torch.zeros(1))
    inner = make([{"params": [w]}, {"params": [other], "weight_decay": 0.0}])
    opt = RotationalWrapper(inner, rows(w), inner_kind=kind) if wrap else inner
    meter, gen = RotationMeter(rows(w)), torch.Generator().manual_seed(1000 + seed)
    gsq, unit = [], []
    for t in range(steps):
        opt.zero_grad()
        x, y = torch.randn(batch, c, generator=gen), torch.randn(batch, k, generator=gen)
        h = x @ w.T
        h = (h - h.mean(0)) / (h.var(0, unbiased=False) + 1e-5).sqrt()
        (((h - y) ** 2).mean() + other.sum() ** 2).backward()
        if t >= start:
            row_sq = (w.grad.detach() ** 2).sum(1)
            gsq.append(float(row_sq.mean()))
            unit.append(float((row_sq * (w.detach() ** 2).sum(1)).mean()))
        meter.before()
        opt.step()
        meter.after()
    s = meter.summary(start)
    return {"norm": float(s["norm"].mean()), "rms": float(s["rms_update"].mean()), "angle": float(s["angle"].mean()),
            "grad_sq": statistics.fmean(gsq), "unit_grad_sq": statistics.fmean(unit)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--start", type=int, default=1500)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'arm':14s} {'norm':>20s} {'pred':>7s} {'RMS update':>22s} {'pred':>9s} {'angle':>22s} {'pred':>9s}")
    for arm in args.arms:
        kind, _, wrap, kw = ARMS[arm]
        res = [run(arm, s, args.steps, args.start) for s in range(args.seeds)]
        lr, wd = HYPER[kind]
        gsq = statistics.fmean(r["grad_sq"] for r in res)
        unit = statistics.fmean(r["unit_grad_sq"] for r in res)
        pred = equilibrium(kind, lr, wd, 128, grad_sq=gsq, unit_grad_sq=unit, **kw)

        def cell(key, res=res):
            vals = [r[key] for r in res]
            return f"{statistics.fmean(vals):.4e} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.1e}"

        norm_pred = "(init)" if wrap else f"{pred.norm:.4f}"
        rms_pred = "—" if wrap or pred.rms_update is None else f"{pred.rms_update:.3e}"
        print(f"{arm:14s} {cell('norm'):>20s} {norm_pred:>7s} {cell('rms'):>22s} {rms_pred:>9s} {cell('angle'):>22s} "
              f"{pred.angular_update:.3e}")


if __name__ == "__main__":
    main()
