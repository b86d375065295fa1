"""Benchmark: how the DDCAdam step scales, against foreach AdamW in the same run (issue 18's table).

    python bench/step_scaling.py [--steps N] [--threads N]

Two sweeps of ``gpt_small_cpu`` variants (LayerNorm, ReLU MLP, RoPE, d_ff = 4d, 8 heads):

* width ``d`` = 128, 256, 512 at 6 layers: is the step linear in the number of parameters?
* depth 2, 6, 12 layers at about fixed block parameters (``L·d²`` constant: d = 448, 256, 176): is it
  flat in depth (the per-family loops and launches grow with the number of layers)?

Each row: total and bound parameters, median ms/step of ``AdamW(foreach)`` and ``DDCAdam`` (default
binding and settings; gradients of one random batch, kept fixed; 2 warmup steps), and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from gaugemath.backends.torch import DDCAdam, bind

from gaugemath.models import gpt_small_cpu


def _median_ms(opt: torch.optim.Optimizer, steps: int) -> float:
    for _ in range(2):
        opt.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def row(d: int, layers: int, steps: int) -> tuple:
    torch.manual_seed(0)
    model = gpt_small_cpu(d_model=d, n_layers=layers, d_ff=4 * d)
    idx = torch.randint(0, 8192, (4, 32))
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    twin = gpt_small_cpu(d_model=d, n_layers=layers, d_ff=4 * d)
    twin.load_state_dict(model.state_dict())
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    binding = bind(model)
    adamw = _median_ms(torch.optim.AdamW(twin.parameters(), lr=1e-4, weight_decay=0.1, foreach=True), steps)
    ddc = _median_ms(DDCAdam(model.parameters(), binding=binding, lr=1e-4, weight_decay=0.1), steps)
    n = sum(p.numel() for p in model.parameters())
    return d, layers, n, binding.bound_numel(), adamw, ddc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'sweep':6s} {'d':>4s} {'L':>3s} {'params':>11s} {'bound':>11s} {'AdamW ms':>9s} {'DDCAdam ms':>11s} "
          f"{'ratio':>6s}")
    for sweep, configs in (("width", [(128, 6), (256, 6), (512, 6)]), ("depth", [(448, 2), (256, 6), (176, 12)])):
        for d, layers in configs:
            d, layers, n, bound, adamw, ddc = row(d, layers, args.steps)
            print(f"{sweep:6s} {d:4d} {layers:3d} {n:11,d} {bound:11,d} {adamw:9.1f} {ddc:11.1f} {ddc / adamw:6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
