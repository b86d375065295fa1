"""Experiment: teleport-then-train vs train (seed 001, [Z] §4.6, §5.4), AdamW and DDCAdam, on the grokking task.

    python bench/teleport_train.py [--seeds 5] [--steps 400] [--at 10] [--teleport-steps 10] [--teleport-lr 0.3]
                                   [--dtype float32|float64] [--optimizers adamw ddcadam]

The CPU grokking model (``gaugemath experiment grokking``'s: modular addition mod 59, a 1-layer LayerNorm/ReLU/RoPE
GPT, full-batch, lr 3e-3, weight decay 1.0) trained for ``--steps`` steps from each seed, once plainly and once with
one L2 teleport at step ``--at`` (after the first steps, where [Z] finds it helps most), the optimizer state moved
with the parameters (``state="teleport"``). Printed: the train loss at four checkpoints, mean ± sd over the seeds,
the teleport's gain in ``‖∇L‖²`` and the loss change it made, and, per optimizer, the largest relative difference
of the two runs' losses in the 20 steps after the teleport and over the whole run. For DDCAdam the first is
round-off (an exactly equivariant optimizer continues from ``g·θ`` as ``g`` times its run from ``θ``), which
training's chaos then amplifies (``--dtype float64`` shows how far); for AdamW it is what teleporting does to it.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from gaugemath.backends.torch import bind

from gaugemath.experiments._common import make_optimizer
from gaugemath.experiments.grokking import SCALES, _model, dataset
from gaugemath.teleport import teleport


def run(cfg, optimizer: str, seed: int, steps: int, at: int | None, t_steps: int, t_lr: float,
        dtype: torch.dtype = torch.float32):
    x, y, _, _ = dataset(cfg.modulus, cfg.train_fraction, seed)
    model = _model(cfg, seed).to(dtype)
    binding = bind(model)
    opt = make_optimizer(optimizer, model, cfg.optim, binding=binding)
    losses, info = [], None
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x)[:, -1], y)
        loss.backward()
        losses.append(float(loss.detach()))
        if step == at:
            closure = lambda: _loss(model, x, y)  # noqa: E731
            info = teleport(model, binding, steps=t_steps, lr=t_lr, optimizer=opt, state="teleport", closure=closure)
        opt.step()
    return losses, info


def _loss(model, x, y):
    model.zero_grad()
    loss = F.cross_entropy(model(x)[:, -1], y)
    loss.backward()
    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--at", type=int, default=10)
    ap.add_argument("--teleport-steps", type=int, default=10)
    ap.add_argument("--teleport-lr", type=float, default=0.3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "ddcadam"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SCALES["cpu"]
    marks = [m for m in (25, 50, 100, 200, 400, 800) if m <= args.steps][-4:]
    print(f"grokking task mod {cfg.modulus}, {args.steps} full-batch steps, lr {cfg.optim.lr}, wd "
          f"{cfg.optim.weight_decay}; teleport at step {args.at}: {args.teleport_steps} ascent steps, lr "
          f"{args.teleport_lr}, state='teleport'; seeds 0..{args.seeds - 1}")
    print(f"{'optimizer':10s} {'run':9s} " + " ".join(f"{'loss@' + str(m):>17s}" for m in marks))
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    print(f"parameters in {args.dtype}")
    for name in args.optimizers:
        plain, moved, gains, dloss, diffs, early = [], [], [], [], [], []
        for seed in range(args.seeds):
            a, _ = run(cfg, name, seed, args.steps, None, args.teleport_steps, args.teleport_lr, dtype)
            b, info = run(cfg, name, seed, args.steps, args.at, args.teleport_steps, args.teleport_lr, dtype)
            plain.append(a)
            moved.append(b)
            gains.append(info.gain)
            dloss.append(abs(info.loss_after - info.loss_before) / info.loss_before)
            rel = [abs(u - v) / u for u, v in zip(a[args.at + 1:], b[args.at + 1:])]
            diffs.append(max(rel))
            early.append(max(rel[:20]))
        for label, runs in (("train", plain), ("teleport", moved)):
            cells = []
            for m in marks:
                vals = [r[m - 1] for r in runs]
                cells.append(f"{statistics.fmean(vals):.3e} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.1e}")
            print(f"{name:10s} {label:9s} " + " ".join(f"{c:>17s}" for c in cells))
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"{name:10s} teleport gain ‖∇L‖²: {statistics.fmean(gains):.2f} ± {sd:.2f}; "
              f"loss change {max(dloss):.1e}; largest relative loss difference of the two runs in the 20 steps "
              f"after it: {max(early):.2e}, over the run: {max(diffs):.2e}")


if __name__ == "__main__":
    main()
