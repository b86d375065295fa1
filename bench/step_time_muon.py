"""Benchmark: ``DDCMuon`` step vs ``torch.optim.Muon`` (hidden matrices) + fused ``AdamW`` (the rest).

    python bench/step_time_muon.py [--model cpu|gpt2|tiny] [--device cpu|cuda] [--steps N] [--warmup N]

Same protocol as ``bench/step_time.py``: one backward pass, gradients kept, only ``step()`` timed
(median of ``--steps`` after ``--warmup``), each optimizer on its own deep copy. Hidden matrices =
2-D parameters inside ``blocks`` (the usual Muon recipe); Muon lr 0.02, AdamW lr 3e-4, decay 0.1.
The last line, ``ratio DDCMuon/(Muon+AdamW fused) = x.xx``, is for grep.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from gaugemath.backends.torch import DDCMuon, bind

from gaugemath.models import gpt2_small, gpt_small_cpu, tiny_gpt


def _hidden(model):
    return [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")]


def _rest(model):
    return [p for n, p in model.named_parameters() if not (p.dim() == 2 and n.startswith("blocks."))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, choices=["cpu", "gpt2", "tiny"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    name = args.model or ("gpt2" if args.device == "cuda" else "cpu")
    torch.manual_seed(0)
    base = {"cpu": gpt_small_cpu, "gpt2": gpt2_small, "tiny": tiny_gpt}[name]().to(dev)
    idx = torch.randint(0, base.vocab, (8, 65), device=dev)
    base.loss(idx[:, :-1], idx[:, 1:]).backward()
    label = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {label}; torch {torch.__version__}; model {name}: "
          f"{sum(p.numel() for p in base.parameters()):,} parameters")

    def clone():
        m = copy.deepcopy(base)
        for p, q in zip(m.parameters(), base.parameters()):
            p.grad = q.grad.clone()
        return m

    peer_model, ours_model = clone(), clone()
    peer = [torch.optim.Muon(_hidden(peer_model), lr=0.02, weight_decay=0.1),
            torch.optim.AdamW(_rest(peer_model), lr=3e-4, weight_decay=0.1, fused=True)]
    ours = [DDCMuon(ours_model.parameters(), binding=bind(ours_model), lr=0.02, adam_lr=3e-4,
                    muon_params=_hidden(ours_model))]
    results = {}
    for label, opts in (("Muon+AdamW(fused)", peer), ("DDCMuon", ours)):
        times = []
        for k in range(args.warmup + args.steps):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for o in opts:
                o.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if k >= args.warmup:
                times.append(1e3 * (time.perf_counter() - t0))
        results[label] = statistics.median(times)
        print(f"{label:20s} median {results[label]:9.2f} ms")
    print(f"ratio DDCMuon/(Muon+AdamW fused) = {results['DDCMuon'] / results['Muon+AdamW(fused)']:.2f}")


if __name__ == "__main__":
    main()
