"""Experiment: rank collapse under rotation symmetry (seed 002 Thm 2, Eq. 51) in attention heads under weight decay.

    python bench/rank_collapse.py [--steps 3000] [--seeds 3] [--decays 0.003 0.01 0.03]

A student ``torch.nn.TransformerEncoderLayer`` (d_model 8, 2 heads of d_head 4, ReLU MLP of 16, pre-norm, no dropout)
fits a teacher of the same shape whose query and key rows span one direction per head (``W_Q,h``, ``W_K,h`` of rank
1), on 128 fixed sequences of 5 random vectors (mean-squared error, full batch), so at most one of the four
directions of each student head is needed. ``bind`` binds the heads' ``O(4)`` rotations (no RoPE) with the norm gains
and the ReLU rescale. Trained with GD (SGD, lr 0.3, coupled decay ``γ``: ``ℓ_γ = ℓ₀ + γ‖θ‖²/2``), AdamW (lr 1e-2,
``weight_decay = γ·0.3/1e-2``, the same per-step shrink ``lr·weight_decay``) and DDCAdam (the same). Printed per
optimizer and ``γ``: head directions at the symmetric point (singular value of ``[W_Q,h | b_Q,h | W_K,h | b_K,h]``
``≤ 1e-6``, of 8), mean ± sd over seeds; the smallest singular value; how many heads keep a weakest direction
(``> 1e-6``) that Eq. 51 says they should lose at the end point (``γ_n < γ/2``: dropping it lowers ``ℓ_γ``), of 2;
and the final ``ℓ₀``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from gaugemath.backends.torch import DDCAdam, bind
from torch import nn

from gaugemath.rank_collapse import collapsed, rank_spectra, rank_thresholds

D, HEADS, FF, T, N = 8, 2, 16, 5, 128
TOL = 1e-6
LR = {"gd": 0.3, "adamw": 1e-2, "ddcadam": 1e-2}


def layer() -> nn.Module:
    return nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=True).double()


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    teacher = layer()
    dh = D // HEADS
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
        w, b = teacher.self_attn.in_proj_weight, teacher.self_attn.in_proj_bias
        for h in range(HEADS):  # one direction per head: Q and K rows of rank 1
            n = torch.randn(dh, generator=gen, dtype=torch.float64)
            proj = torch.outer(n, n) / n.dot(n)
            for base in (0, D):
                rows = slice(base + h * dh, base + (h + 1) * dh)
                w[rows] = proj @ w[rows]
                b[rows] = proj @ b[rows]
        x = torch.randn(N, T, D, generator=gen, dtype=torch.float64)
        return x, teacher(x)


def run(opt_name: str, gamma: float, seed: int, steps: int):
    x, y = data(100 + seed)
    torch.manual_seed(seed)
    model = layer()
    loss = lambda m: ((m(x) - y) ** 2).mean()  # noqa: E731
    binding = bind(model, example=(x[:2],))
    lr = LR[opt_name]
    if opt_name == "gd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    elif opt_name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=gamma * LR["gd"] / lr)
    else:
        opt = DDCAdam(model.parameters(), binding=binding, lr=lr, weight_decay=gamma * LR["gd"] / lr)
    for _ in range(steps):
        opt.zero_grad()
        obj = loss(model)
        if opt_name == "gd":
            obj = obj + 0.5 * gamma * sum((p * p).sum() for p in model.parameters())
        obj.backward()
        opt.step()
    heads = [f.name for f in binding.families if f.kind == "head"]
    spectra = rank_spectra(binding)
    lost = sum(int(collapsed(binding, TOL)[n].sum()) for n in heads)
    smallest = min(float(spectra[n].min()) for n in heads)
    with torch.no_grad():
        th = rank_thresholds(model, binding, loss)
        final = float(loss(model))
    # heads whose weakest direction survives (> TOL) although dropping it would lower ℓ₀ + γ‖θ‖²/2
    favoured = sum(int(((th[n] < gamma / 2) & (spectra[n][:, -1] > TOL)).sum()) for n in heads)
    return lost, smallest, favoured, final


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--decays", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{args.steps} full-batch steps, {args.seeds} seeds; {HEADS} heads x d_head {D // HEADS} = "
          f"{D} head directions; teacher uses 1 per head")
    print(f"{'gamma':>7s} {'optimizer':>9s} {'lost (<=1e-6)':>15s} {'min sing. value':>16s} "
          f"{'Eq.51 favours':>14s} {'final loss':>12s}")
    for gamma in args.decays:
        for name in ("gd", "adamw", "ddcadam"):
            rows = [run(name, gamma, s, args.steps) for s in range(args.seeds)]
            lost = [r[0] for r in rows]
            print(f"{gamma:7g} {name:>9s} {_ms(lost):>15s} {min(r[1] for r in rows):16.2e} "
                  f"{_ms([r[2] for r in rows]):>14s} {statistics.mean(r[3] for r in rows):12.4e}")


def _ms(v) -> str:
    return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


if __name__ == "__main__":
    main()
